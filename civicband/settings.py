"""The project's defaults; the only place that reads the environment."""

import os

from scrapy.settings import default_settings

from civicband import __version__

BOT_NAME = "civicband"
SPIDER_MODULES = ["civicband.spiders"]
NEWSPIDER_MODULE = "civicband.spiders"
COMMANDS_MODULE = "civicband.commands"

# civic.band's bot wall refuses Scrapy's default and browser-like agents: say who we are.
USER_AGENT = f"civicband/{__version__} (civic.band PostgreSQL mirror)"
ROBOTSTXT_OBEY = False
LOG_LEVEL = "INFO"

CIVICBAND_DATABASE_URL = os.environ.get("CIVICBAND_DATABASE_URL", "")
CIVICBAND_HOME = os.environ.get("CIVICBAND_HOME", ".civicband")
CIVICBAND_DB_POOL_SIZE = 4
CIVICBAND_DB_RETRIES = 6
CIVICBAND_DB_TIMEOUT = 10.0
# Seconds between round trips on the lease connection: one cut while idle (a reaper, a NAT
# timeout) is reconnected and its leases taken again within about this long.
CIVICBAND_LEASE_CHECK_INTERVAL = 5.0
CIVICBAND_SITE_URL = "https://{subdomain}.civic.band"
CIVICBAND_INDEX_URL = "https://civic.band/"
CIVICBAND_SERVICE_SECRET = os.environ.get("CIVICBAND_SERVICE_SECRET", "")
CIVICBAND_BATCH_SIZE = 1000
CIVICBAND_VERIFY_MAX_MISSING_RATIO = 0.01
CIVICBAND_VERIFY_MAX_MISSING_ROWS = 100
# Jobs one process holds at once (and so advisory locks): enough to keep the shared slot's 8
# concurrent requests busy with one page per job in flight; it claims more as they end.
CIVICBAND_MAX_ACTIVE_JOBS = 8
# Longest request URL: the digest and listing SQL carry the fingerprint (about 4,500 characters
# encoded); civic.band's look-alike answers 414 past 8,190 (SPEC §1: stay within 8 KB).
URLLENGTH_LIMIT = 8000
# A (site, type) whose source holds fewer than this share of the mirror's rows is not swept.
CIVICBAND_SHRINK_GUARD = 0.5
# A removal of more than this share of a (site, type)'s pages, within the guard, is warned about.
CIVICBAND_REMOVAL_WARN_RATIO = 0.1
CIVICBAND_PROGRESS_INTERVAL = 60.0
# Removed pages stay in page_tombstones this many days (the feed's deletes, and pages that come
# back without fetching their text); older ones are purged at the end of each run.
CIVICBAND_TOMBSTONE_DAYS = 30
# Tables the mirror holds more rows of than this have their digest taken in 16 id ranges: the
# fingerprint reads every row and follows its chains, about twice fingerprint 2's 20 us a row
# warm and 27 us cold (bench/digest.py), so one query over 50,000 rows stays within civic.band's
# 3 s limit. A query that hits the limit anyway is split in 16 once more.
CIVICBAND_DIGEST_SPLIT_ROWS = 50_000
# What one request is worth in bytes of answer, for the catch-up's cost model (its bisection
# depth, and whether a full pass is cheaper): 0 is 256 KB with the secret, 4 MB without.
CIVICBAND_REQUEST_BYTES = 0
# Spidermon's rejected-rows monitor fails past this many rows rejected in one crawl.
CIVICBAND_MONITOR_MAX_REJECTED = 0
# Where the final stats go as JSON (empty: nowhere).
CIVICBAND_STATS_FILE = ""
CIVICBAND_BACKOFF_BASE = 1.0
CIVICBAND_BACKOFF_MAX = 60.0
# A retry waits up to this fraction longer than its base·2^n, so retries do not move in lockstep.
CIVICBAND_BACKOFF_JITTER = 0.5
# 429 / civic.band's 402 without Retry-After: wait out its one-minute window, at most this often
# per request (an hour of waiting), so a 402 that never ends fails the job instead of looping.
CIVICBAND_RATE_LIMIT_WINDOW = 60.0
CIVICBAND_RATE_LIMIT_MAX_WAITS = 60
# Without a service secret civic.band allows 15 JSON requests a minute per IP and 100-row pages.
CIVICBAND_PUBLIC_REQUESTS_PER_MINUTE = 15
CIVICBAND_PUBLIC_PAGE_SIZE = 100
# All civic.band sites share one server and one per-IP limit, so all share one download slot.
CIVICBAND_DOWNLOAD_SLOT = "civic.band"

DOWNLOAD_TIMEOUT = 120
RETRY_TIMES = 5
CONCURRENT_REQUESTS = 16
CONCURRENT_REQUESTS_PER_DOMAIN = 8
DOWNLOAD_DELAY = 0
# A 1000-row page is 2-4 MB of JSON: this bounds the pages parsed and waiting to be stored
# (memory) while leaving room for a few jobs to write at once.
SCRAPER_SLOT_MAX_ACTIVE_SIZE = 20_000_000

# Scrapy's components that are never on here are left out of the base lists themselves: Scrapy
# imports every key of EXTENSIONS and DOWNLOADER_MIDDLEWARES, None or not, and these modules pull
# in aiohttp, twisted.conch, tldextract and requests, about a tenth of the crawl's start-up.
# The telnet console and remote control run arbitrary code inside the crawl, which holds the
# database URL and the service secret; live status is read-only (SPEC §4). The sites answer a
# service secret sent in a header, never a cookie.
EXTENSIONS_BASE = {
    path: order
    for path, order in default_settings.EXTENSIONS_BASE.items()
    if path
    not in (
        "scrapy.extensions.telnet.TelnetConsole",
        "scrapy.extensions.remote_control.RemoteControl",
    )
}
DOWNLOADER_MIDDLEWARES_BASE = {
    path: order
    for path, order in default_settings.DOWNLOADER_MIDDLEWARES_BASE.items()
    if path != "scrapy.downloadermiddlewares.cookies.CookiesMiddleware"
}

# The civicband spider adds its own components (its jobs' registry and progress, the cursor
# gate, the page pipeline): civicband.spiders.civicband.CivicbandSpider.components.
DOWNLOADER_MIDDLEWARES = {
    # Scrapy's RetryMiddleware, extended with backoff and rate-limit waits (civicband/middlewares/).
    "scrapy.downloadermiddlewares.retry.RetryMiddleware": None,
    "civicband.middlewares.retry.BackoffRetryMiddleware": 550,
}
# Without a service secret: the shared slot's public pace (an add-on: it sets DOWNLOAD_SLOTS
# before settings freeze) and pages no larger than civic.band serves. Monitoring: with
# -s SPIDERMON_ENABLED=True (civicband[monitoring]), Spidermon runs civicband's monitor suite.
ADDONS = {
    "civicband.middlewares.pace.PublicRateLimit": 0,
    "civicband.extensions.monitoring.Monitoring": 0,
}
SPIDER_MIDDLEWARES = {"civicband.middlewares.pace.PublicPageCap": 600}

# Live stats over JSON-RPC (SPEC §4): read-only, on loopback unless told; off unless asked for.
JSONRPC_ENABLED = False
JSONRPC_HOST = "127.0.0.1"
JSONRPC_PORT = [6080, 7030]

EXTENSIONS = {
    "civicband.store.Store": 0,
    "civicband.source.Source": 1,
    "civicband.extensions.outcome.Outcome": 10,
    "civicband.extensions.statsfile.StatsFile": 20,
    "civicband.extensions.jsonrpc.JsonRpc": 500,
}
