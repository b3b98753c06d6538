"""Retries, backoff, rate limits and the public pace, on Scrapy's own objects (no services)."""

from __future__ import annotations

import asyncio
import email.utils
from typing import Any

import pytest
from scrapy import Request
from scrapy.core.downloader import Downloader, Slot
from scrapy.exceptions import IgnoreRequest
from scrapy.http import HtmlResponse, Response, TextResponse
from scrapy.utils.test import get_crawler

from civicband import settings as project
from civicband.args import ArgumentError
from civicband.backoff import backoff_delay
from civicband.config import read_limits
from civicband.middlewares.meta import RATE_LIMIT_WAITS, REQUEUED, RETRIES_EXHAUSTED
from civicband.middlewares.pace import PublicPageCap, cap_page_size, public_interval
from civicband.middlewares.ratelimit import is_rate_limited, parse_retry_after
from civicband.middlewares.retry import BackoffRetryMiddleware, looks_like_json_object
from civicband.source import Source
from civicband.spiders.civicband import CivicbandSpider

URL = "https://oakland.ca.civic.band/meetings/agendas.json?_sort=id&_size=1000&_nocount=1"
PAGE = b'{"ok": true, "next": null, "rows": [], "truncated": false}'
INTERRUPTED_10 = b'{"ok": false, "error": "QueryInterrupted: interrupted", "status": 500}'
INTERRUPTED_065 = (
    b'{"ok": false, "error": "<p>SQL query took too long. The time limit is controlled by the'
    b' ...", "status": 400, "title": "SQL Interrupted"}'
)
RATE_LIMITED = (
    b'{"error": "rate_limit_exceeded", "message": "Rate limit exceeded. Maximum 15 requests'
    b' per minute.", "get_api_key": "https://civic.observer/api-keys"}'
)


def crawler_for(spidercls: Any = None, **overrides: Any) -> Any:
    """A crawler with the project's settings (no database extension) plus overrides."""
    values = {name: getattr(project, name) for name in dir(project) if name.isupper()}
    values.pop("EXTENSIONS")
    values.update({"CIVICBAND_SERVICE_SECRET": "", **overrides})
    return get_crawler(spidercls, values)


def middleware(**overrides: Any) -> BackoffRetryMiddleware:
    """The downloader middleware as the crawl builds it, on a running-looking crawler."""
    crawler = crawler_for(**overrides)
    crawler.spider = crawler.spidercls.from_crawler(crawler)
    crawler.crawling = True
    return BackoffRetryMiddleware.from_crawler(crawler)


def request(url: str = URL, **meta: Any) -> Request:
    return Request(url, meta={"download_slot": "civic.band", **meta})


def answer(req: Request, status: int, body: bytes, **headers: Any) -> Response:
    cls = HtmlResponse if body.lstrip().startswith(b"<") else TextResponse
    return cls(req.url, status=status, body=body, headers=headers, request=req)


def stats(mw: BackoffRetryMiddleware) -> dict[str, Any]:
    return mw.crawler.stats.get_stats()


# ---- backoff schedule ---------------------------------------------------------------------------


def test_backoff_doubles_from_base_up_to_the_cap_without_jitter():
    delays = [backoff_delay(n, 1.0, 60.0, 0.5, rand=lambda: 0.0) for n in range(1, 9)]
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60]
    assert backoff_delay(0, 1.0, 60.0, 0.5) == 0.0  # the first try never waits
    assert backoff_delay(3, 0.0, 60.0, 0.5) == 0.0  # base 0 turns backoff off
    assert backoff_delay(10_000, 1.0, 60.0, 0.5) == 60.0  # no overflow far out


def test_jitter_only_lengthens_a_wait_and_never_past_the_cap():
    assert backoff_delay(3, 1.0, 60.0, 0.5, rand=lambda: 1.0) == 6.0
    for n in range(1, 10):
        nominal = min(60.0, 2.0 ** (n - 1))
        for _ in range(200):
            delay = backoff_delay(n, 1.0, 60.0, 0.5)
            assert nominal <= delay <= min(60.0, nominal * 1.5)
    spread = {backoff_delay(2, 1.0, 60.0, 0.5) for _ in range(50)}
    assert len(spread) > 40, "jitter should spread retries"


# ---- Retry-After ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(b"5", 5.0), ("0", 0.0), (b" 12 ", 12.0), ("1.5", 1.5)],
)
def test_retry_after_in_seconds(value, seconds):
    assert parse_retry_after(value) == seconds


@pytest.mark.parametrize("value", [None, b"", b"soon", b"-3", b"nan", b"inf"])
def test_unusable_retry_after_is_none(value):
    assert parse_retry_after(value) is None


def test_retry_after_as_an_http_date():
    now = 1_700_000_000.0
    later = email.utils.formatdate(now + 90, usegmt=True).encode()
    assert parse_retry_after(later, now=now) == pytest.approx(90.0)
    earlier = email.utils.formatdate(now - 90, usegmt=True)
    assert parse_retry_after(earlier, now=now) == 0.0
    naive = email.utils.formatdate(now + 30)  # "-0000": GMT as well
    assert parse_retry_after(naive, now=now) == pytest.approx(30.0)


# ---- what counts as what -------------------------------------------------------------------------


def test_rate_limit_answers():
    assert is_rate_limited(402, RATE_LIMITED)
    assert is_rate_limited(429, b"")
    assert not is_rate_limited(402, b'{"error": "payment required"}')
    assert not is_rate_limited(403, RATE_LIMITED)


def test_json_object_check_is_cheap_and_catches_html_and_cut_bodies():
    assert looks_like_json_object(PAGE)
    assert looks_like_json_object(b"\n  " + PAGE + b"\r\n")
    assert not looks_like_json_object(b"<!doctype html><html>Access denied</html>")
    assert not looks_like_json_object(PAGE[: len(PAGE) // 2])
    assert not looks_like_json_object(b"")


def test_page_size_cap_rewrites_only_size_and_keeps_the_cursor_verbatim():
    url = "http://h/s/meetings/agendas.json?_sort=id&_size=1000&_next=00d5%2C00d5&_nocount=1"
    assert cap_page_size(url, 100) == url.replace("_size=1000", "_size=100")
    assert cap_page_size(url.replace("1000", "50"), 100) == url.replace("1000", "50")
    assert cap_page_size(url, 0) == url  # 0: no cap
    assert cap_page_size("http://h/x.json?a_size=500", 100) == "http://h/x.json?a_size=500"


def test_public_interval_keeps_under_the_rate_with_a_margin():
    assert public_interval(15) == pytest.approx(4.2)
    assert public_interval(120) >= 0.5
    assert public_interval(0) == 0.0


def test_bad_settings_are_refused_with_their_name():
    for name, value in [
        ("CIVICBAND_BACKOFF_BASE", "-1"),
        ("CIVICBAND_BACKOFF_MAX", "soon"),
        ("CIVICBAND_RATE_LIMIT_MAX_WAITS", "1.5"),
        ("CIVICBAND_PUBLIC_REQUESTS_PER_MINUTE", "nan"),
    ]:
        with pytest.raises(ArgumentError, match=name):
            read_limits(crawler_for(**{name: value}).settings)
    with pytest.raises(ArgumentError, match="CIVICBAND_BACKOFF_MAX"):
        read_limits(crawler_for(CIVICBAND_BACKOFF_BASE=10, CIVICBAND_BACKOFF_MAX=5).settings)


# ---- which answers are retried -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (503, b'{"ok": false}', "503 Service Unavailable"),
        (502, b"", "502 Bad Gateway"),
        (501, b"", "501 Not Implemented"),  # every 5xx, not only RETRY_HTTP_CODES
        (500, INTERRUPTED_10, "datasette_interrupted"),  # Datasette 1.0
        (400, INTERRUPTED_065, "datasette_interrupted"),  # Datasette 0.65
        (200, b"<!doctype html><html>Access denied</html>", "civicband_not_json"),
        (200, PAGE[:30], "civicband_not_json"),  # truncated
    ],
)
def test_transient_answers_are_retried_and_counted_as_scrapy_does(status, body, reason):
    mw = middleware()
    req = request()
    retry = mw.process_response(req, answer(req, status, body))
    assert isinstance(retry, Request) and retry.url == req.url
    assert retry.meta["retry_times"] == 1
    assert stats(mw)["retry/count"] == 1
    assert stats(mw)[f"retry/reason_count/{reason}"] == 1


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (200, PAGE),
        (400, b'{"ok": false, "error": "_size must be <= 1000", "status": 400}'),
        (403, b"forbidden"),
        (404, b'{"ok": false, "error": "Table not found", "status": 404}'),
        (402, b'{"error": "payment required"}'),
        (302, b""),
        (301, b""),
    ],
)
def test_other_answers_pass_through_unchanged(status, body):
    mw = middleware()
    req = request()
    resp = answer(req, status, body)
    assert mw.process_response(req, resp) is resp
    assert "retry/count" not in stats(mw)


def test_html_not_asked_for_as_json_is_not_checked():
    mw = middleware()
    req = Request("https://civic.band/", meta={"download_slot": "civic.band"})
    resp = answer(req, 200, b"<html>the index</html>")
    assert mw.process_response(req, resp) is resp


def test_exhausted_5xx_reaches_the_errback_with_its_status():
    mw = middleware(RETRY_TIMES=2)
    req = request(retry_times=2)
    resp = answer(req, 503, b"")
    assert mw.process_response(req, resp) is resp
    assert stats(mw)["retry/max_reached"] == 1
    assert req.meta[RETRIES_EXHAUSTED] is True


def test_exhausted_bad_body_is_left_to_the_spider_and_counted_once():
    mw = middleware(RETRY_TIMES=2)
    req = request(retry_times=2)
    resp = answer(req, 200, b"<html>Access denied</html>")
    assert mw.process_response(req, resp) is resp
    # The spider's parse fails it and its get_retry_request counts max_reached: not here too.
    assert "retry/max_reached" not in stats(mw)


def test_dont_retry_is_respected():
    mw = middleware()
    req = request(dont_retry=True)
    resp = answer(req, 503, b"")
    assert mw.process_response(req, resp) is resp


def test_timeouts_and_connection_errors_are_retried_by_scrapys_code():
    from scrapy.exceptions import DownloadTimeoutError
    from twisted.internet.error import ConnectionRefusedError

    mw = middleware()
    for error in (DownloadTimeoutError(), ConnectionRefusedError()):
        retry = mw.process_exception(request(), error)
        assert isinstance(retry, Request) and retry.meta["retry_times"] == 1


# ---- rate limits ---------------------------------------------------------------------------------


def test_402_and_429_do_not_use_up_retry_times():
    mw = middleware(RETRY_TIMES=1, CIVICBAND_RATE_LIMIT_WINDOW=7)
    req = request()
    for n, (status, body) in enumerate([(402, RATE_LIMITED), (429, b""), (402, RATE_LIMITED)]):
        retry = mw.process_response(req, answer(req, status, body))
        assert isinstance(retry, Request)
        assert retry.meta.get("retry_times", 0) == 0
        assert retry.meta[RATE_LIMIT_WAITS] == n + 1
        req = retry
    assert "retry/count" not in stats(mw)
    assert stats(mw)["civicband/ratelimit/waits"] == 3
    # One slot pause of the window, extended by each answer, counted as wall-clock seconds.
    assert 7.0 <= stats(mw)["civicband/ratelimit/seconds"] < 7.5
    # RETRY_TIMES still applies to real errors after rate limits.
    assert isinstance(mw.process_response(req, answer(req, 503, b"")), Request)


def test_retry_after_sets_the_pause_else_the_window():
    mw = middleware(CIVICBAND_RATE_LIMIT_WINDOW=30)
    clock = on_clock(mw)
    req = request()
    mw.process_response(req, answer(req, 402, RATE_LIMITED, **{"Retry-After": "3"}))
    assert mw.pauses.until("civic.band") - clock() == 3.0
    other = request(download_slot="elsewhere")
    mw.process_response(other, answer(other, 429, b""))
    assert mw.pauses.until("elsewhere") - clock() == 30.0


@pytest.mark.parametrize(("status", "body"), [(402, RATE_LIMITED), (429, b"")])
def test_rate_limit_waits_are_bounded(status, body):
    mw = middleware(CIVICBAND_RATE_LIMIT_MAX_WAITS=2)
    req = request(**{RATE_LIMIT_WAITS: 2})
    resp = answer(req, status, body)
    # To the errback with its own status: the job fails with `HTTP 402` or `HTTP 429`.
    assert mw.process_response(req, resp) is resp
    assert resp.status == status and req.meta[RETRIES_EXHAUSTED] is True
    assert stats(mw)["civicband/ratelimit/gave_up"] == 1


# ---- waiting without blocking --------------------------------------------------------------------


class FakeClock:
    """Time the test controls: a sleep lets the event loop run once, then moves time on."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        await asyncio.sleep(0)
        self.now += seconds


def on_clock(mw: BackoffRetryMiddleware) -> FakeClock:
    """The middleware's waits, judged on a clock the test controls instead of the wall clock."""
    clock = FakeClock()
    mw.pauses.clock = clock
    mw.sleep = clock.sleep
    return clock


def test_a_retry_waits_its_backoff_once_and_others_do_not_wait():
    mw = middleware(CIVICBAND_BACKOFF_BASE=0.5, CIVICBAND_BACKOFF_JITTER=0)
    clock = on_clock(mw)

    async def run() -> tuple[float, float, float, float, int]:
        retry = request(retry_times=1)
        started = clock()
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.ensure_future(ticker())
        assert await mw.process_request(retry) is None
        waited = clock() - started
        task.cancel()
        total = stats(mw)["civicband/retry/backoff_seconds"]
        started = clock()
        assert await mw.process_request(retry) is None  # same attempt again: no second wait
        assert await mw.process_request(request()) is None  # a first try: no wait
        again = clock() - started
        return waited, again, total, stats(mw)["civicband/retry/backoff_seconds"], ticks

    waited, again, total, after, ticks = asyncio.run(run())
    assert ticks >= 1, "the loop kept running while the retry waited"
    assert waited == 0.5  # base·2⁰, no jitter
    assert clock.slept == [0.5]
    assert total == 0.5  # the wait is counted as it was measured inside the call
    assert after == total, "a second wait was counted"
    assert again == 0


def test_a_rate_limit_pauses_the_whole_slot_but_not_other_slots():
    mw = middleware()
    clock = on_clock(mw)

    async def run() -> tuple[float, float]:
        limited = request()
        mw.process_response(limited, answer(limited, 402, RATE_LIMITED, **{"Retry-After": "1"}))
        started = clock()
        await mw.process_request(request("https://elsewhere.example/x.json", download_slot="x"))
        other_slot = clock() - started
        started = clock()
        # Another site on the shared slot: held as well.
        await mw.process_request(request(URL.replace("oakland.ca", "berkeley.ca")))
        return other_slot, clock() - started

    other_slot, same_slot = asyncio.run(run())
    assert other_slot == 0
    assert same_slot == 1.0  # exactly the Retry-After, in WAIT_STEP steps
    assert clock.slept == [0.5, 0.5]


def test_a_pause_also_holds_requests_already_queued_in_a_delayed_slot():
    mw = middleware()
    clock = on_clock(mw)
    downloader = Downloader(mw.crawler)
    slot = downloader.slots["civic.band"] = Slot(concurrency=1, delay=0.5, jitter=0)
    slot.lastseen = clock()
    mw.crawler.engine = type("Engine", (), {"downloader": downloader})()
    req = request()
    mw.process_response(req, answer(req, 402, RATE_LIMITED, **{"Retry-After": "10"}))
    # The downloader sends a slot's next request `delay` after `lastseen`: 10 s from now.
    assert slot.lastseen + slot.delay - clock() == 10.0


def test_stopping_sends_a_waiting_request_back_to_the_queue_not_to_the_errback():
    mw = middleware(CIVICBAND_BACKOFF_BASE=30)
    clock = on_clock(mw)
    mw.crawler.crawling = False  # Ctrl-C: Crawler.stop() clears this first

    async def run() -> tuple[Any, float]:
        started = clock()
        requeued = await mw.process_request(request(retry_times=1))
        return requeued, clock() - started

    requeued, took = asyncio.run(run())
    assert isinstance(requeued, Request) and requeued.meta[REQUEUED] is True
    assert took == 0 and clock.slept == []  # not the 30 s backoff, not a step of it
    # Handed straight back (engine.download_async loops on a returned Request): dropped.
    with pytest.raises(IgnoreRequest):
        asyncio.run(mw.process_request(requeued))


# ---- public limits and the shared slot -----------------------------------------------------------


def spider_requests(crawler: Any) -> list[Request]:
    """First page requests for two sites on two hosts, built as the spider builds them."""
    source = Source.from_crawler(crawler)
    return [
        source.request(source.page_url("oakland.ca", "agenda", 1000, None), cursor=None),
        source.request(source.page_url("berkeley.ca", "minutes", 1000, None), cursor=None),
    ]


def test_all_sites_share_one_slot_at_the_public_pace_without_a_secret():
    crawler = crawler_for(CivicbandSpider, CIVICBAND_PUBLIC_REQUESTS_PER_MINUTE=15)
    downloader = Downloader(crawler)
    oakland, berkeley = spider_requests(crawler)
    assert oakland.url.startswith("https://oakland.ca.civic.band/")
    assert berkeley.url.startswith("https://berkeley.ca.civic.band/")
    assert downloader.get_slot_key(oakland) == downloader.get_slot_key(berkeley) == "civic.band"
    assert downloader.per_slot_settings["civic.band"] == {
        "concurrency": 1,
        "delay": pytest.approx(4.2),
        "jitter": 0.0,
    }
    # Without the shared slot, Scrapy would give each subdomain its own slot.
    assert downloader.get_slot_key(Request(oakland.url)) != downloader.get_slot_key(
        Request(berkeley.url)
    )


def test_with_a_secret_the_shared_slot_runs_at_full_speed():
    crawler = crawler_for(CivicbandSpider, CIVICBAND_SERVICE_SECRET="s3cret")
    downloader = Downloader(crawler)
    oakland, berkeley = spider_requests(crawler)
    assert downloader.get_slot_key(oakland) == downloader.get_slot_key(berkeley) == "civic.band"
    assert "civic.band" not in downloader.per_slot_settings
    assert crawler.settings.getfloat("DOWNLOAD_DELAY") == 0


def test_a_users_own_download_slots_entry_wins():
    mine = {"civic.band": {"concurrency": 2, "delay": 10}}
    crawler = crawler_for(CivicbandSpider, DOWNLOAD_SLOTS=mine)
    assert Downloader(crawler).per_slot_settings["civic.band"] == mine["civic.band"]


def test_public_pages_are_asked_for_at_most_100_rows_and_secret_ones_are_not():
    crawler = crawler_for(CivicbandSpider)
    cap = PublicPageCap.from_crawler(crawler)
    oakland, _ = spider_requests(crawler)
    assert "_size=1000" in oakland.url
    capped = cap.get_processed_request(oakland, None)
    assert capped.url == oakland.url.replace("_size=1000", "_size=100")
    assert capped.meta == oakland.meta and capped.callback == oakland.callback

    trusted = crawler_for(CivicbandSpider, CIVICBAND_SERVICE_SECRET="s3cret")
    oakland, _ = spider_requests(trusted)
    assert PublicPageCap.from_crawler(trusted).get_processed_request(oakland, None) is oakland


def test_the_shared_slot_is_named_by_a_setting_and_gets_the_public_pace():
    crawler = crawler_for(CivicbandSpider, CIVICBAND_DOWNLOAD_SLOT="civic.band-via-proxy")
    downloader = Downloader(crawler)
    oakland, berkeley = spider_requests(crawler)
    assert oakland.meta["download_slot"] == berkeley.meta["download_slot"] == "civic.band-via-proxy"
    assert downloader.get_slot_key(oakland) == "civic.band-via-proxy"
    assert downloader.per_slot_settings["civic.band-via-proxy"]["concurrency"] == 1
    assert "civic.band" not in downloader.per_slot_settings
    # Requests of that slot without the secret are the ones capped to public pages.
    cap = PublicPageCap.from_crawler(crawler)
    assert "_size=100&" in cap.get_processed_request(oakland, None).url
    other = request(URL, download_slot="elsewhere")
    assert cap.get_processed_request(other, None) is other


@pytest.mark.parametrize(("size", "asked"), [(50, "_size=50&"), (0, "_size=1000&")])
def test_the_public_page_size_is_a_setting_and_0_leaves_size_alone(size, asked):
    crawler = crawler_for(CivicbandSpider, CIVICBAND_PUBLIC_PAGE_SIZE=size)
    oakland, _ = spider_requests(crawler)
    capped = PublicPageCap.from_crawler(crawler).get_processed_request(oakland, None)
    assert asked in capped.url
    assert capped.url.replace(asked, "_size=1000&") == oakland.url
