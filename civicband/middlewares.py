"""Retries with backoff, rate-limit waits and civic.band's public limits, without blocking.

Scrapy's RetryMiddleware retries at once: it has no backoff (scrapy#3849) and treats a 429
like any error, using up RETRY_TIMES. `BackoffRetryMiddleware` extends it rather than
replacing it, so `get_retry_request`, RETRY_TIMES, `max_retry_times`, RETRY_EXCEPTIONS and
the `retry/...` stats keep their meaning:

- process_response adds what Scrapy lacks: every 5xx, Datasette's query-interrupted answers
  (500 on 1.0, 400 on 0.65), and a 200 that is plainly not a JSON object are retried; 429 and
  civic.band's 402 `rate_limit_exceeded` pause the whole download slot and are retried
  without counting against RETRY_TIMES.
- process_request (async) sleeps before any retry, wherever it was made (here, or by the
  spider's own get_retry_request), and holds requests of a paused slot. The sleep is
  `scrapy.utils.asyncio.sleep`: the reactor keeps serving other requests meanwhile.

Without a service secret, civic.band allows 15 JSON requests a minute per IP and 100-row
pages. `PublicRateLimit` (an add-on, because DOWNLOAD_SLOTS must be settled before settings
freeze) gives the shared slot that pace; `PublicPageCap` (a spider middleware) asks for
pages of at most 100 rows.
"""

from __future__ import annotations

import datetime
import email.utils
import logging
import math
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Self

from scrapy import Request, Spider
from scrapy.downloadermiddlewares.retry import RetryMiddleware
from scrapy.exceptions import IgnoreRequest, NotConfigured
from scrapy.http import Response
from scrapy.settings import SETTINGS_PRIORITIES, BaseSettings
from scrapy.spidermiddlewares.base import BaseSpiderMiddleware
from scrapy.utils.asyncio import sleep
from scrapy.utils.httpobj import urlparse_cached
from scrapy.utils.response import response_status_message

from civicband import signals as civicband_signals
from civicband.args import ArgumentError
from civicband.datasette import is_interrupted

if TYPE_CHECKING:
    from scrapy.core.downloader import Slot
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)

SECRET_HEADER = "X-Service-Secret"
# A Retry-After of days would stall the crawl silently; an hour is already far past civic.band's
# one-minute window.
RETRY_AFTER_CAP = 3600.0
# Spacing of exactly 60/N s puts request N+1 on the edge of a 60 s sliding window; network
# jitter could then land it inside. 5 % more keeps it clear.
PUBLIC_MARGIN = 1.05
# Waits are taken in steps this long so that Ctrl-C / SIGTERM is not held up by a long wait.
WAIT_STEP = 0.5
# Request meta keys of this module.
BACKOFF_DONE = "civicband_backoff_done"
RATE_LIMIT_WAITS = "civicband_ratelimit_waits"
RETRIES_EXHAUSTED = "civicband_retries_exhausted"
REQUEUED = "civicband_requeued_on_stop"
# A query that may hit the time limit because it is too big: its caller splits it instead.
SPLIT_ON_INTERRUPT = "civicband_split_on_interrupt"
SIZE_PARAM = re.compile(r"(?<=[?&]_size=)(\d+)(?=&|$)")


@dataclass(frozen=True)
class Limits:
    """The settings of this module, checked and typed."""

    backoff_base: float
    backoff_max: float
    backoff_jitter: float
    rate_limit_window: float
    rate_limit_max_waits: int
    public_per_minute: float
    public_page_size: int
    slot: str


def _number(settings: BaseSettings, name: str, *, integer: bool = False) -> float:
    """A non-negative number setting, or a one-line error naming it."""
    raw = settings.get(name)
    try:
        value = int(raw) if integer else float(raw)
    except (TypeError, ValueError):
        kind = "a whole number" if integer else "a number"
        raise ArgumentError(f"{name}: expected {kind} >= 0, got {raw!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ArgumentError(f"{name}: expected a number >= 0, got {raw!r}")
    return value


def check_settings(settings: BaseSettings) -> Limits:
    """Read this module's settings; a bad one raises ArgumentError naming it (exit status 2)."""
    limits = Limits(
        backoff_base=_number(settings, "CIVICBAND_BACKOFF_BASE"),
        backoff_max=_number(settings, "CIVICBAND_BACKOFF_MAX"),
        backoff_jitter=_number(settings, "CIVICBAND_BACKOFF_JITTER"),
        rate_limit_window=_number(settings, "CIVICBAND_RATE_LIMIT_WINDOW"),
        rate_limit_max_waits=int(_number(settings, "CIVICBAND_RATE_LIMIT_MAX_WAITS", integer=True)),
        public_per_minute=_number(settings, "CIVICBAND_PUBLIC_REQUESTS_PER_MINUTE"),
        public_page_size=int(_number(settings, "CIVICBAND_PUBLIC_PAGE_SIZE", integer=True)),
        slot=str(settings.get("CIVICBAND_DOWNLOAD_SLOT") or ""),
    )
    if limits.backoff_max < limits.backoff_base:
        raise ArgumentError(
            f"CIVICBAND_BACKOFF_MAX ({limits.backoff_max:g}) must be at least"
            f" CIVICBAND_BACKOFF_BASE ({limits.backoff_base:g})"
        )
    if not limits.slot:
        raise ArgumentError("CIVICBAND_DOWNLOAD_SLOT: must not be empty (default civic.band)")
    return limits


def backoff_delay(
    attempt: int,
    base: float,
    cap: float,
    jitter: float,
    rand: Callable[[], float] = random.random,
) -> float:
    """Wait before retry `attempt` (1 = first): base·2^(attempt−1), up to `jitter` more, ≤ cap."""
    if attempt < 1 or base <= 0:
        return 0.0
    nominal = base * 2.0 ** min(attempt - 1, 64)
    # Jitter only lengthens a wait, so the schedule is a floor the tests can check; at the cap
    # waits are equal, but by then their start times are already spread by earlier jitter.
    return min(cap, nominal * (1.0 + jitter * rand()))


def parse_retry_after(value: bytes | str | None, now: float | None = None) -> float | None:
    """Seconds a Retry-After header asks for (delta-seconds or HTTP-date); None if unusable."""
    if value is None:
        return None
    text = (value.decode("latin-1") if isinstance(value, bytes) else value).strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; "-0000" parses as naive
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def is_rate_limited(status: int, body: bytes) -> bool:
    """429, or civic.band's 402 `rate_limit_exceeded` (a 402 that says otherwise is not one)."""
    return status == 429 or (status == 402 and b"rate_limit_exceeded" in body[:4000])


def looks_like_json_object(body: bytes) -> bool:
    """Cheap test for a whole JSON object: a bot wall or a cut-off body fails it."""
    return body[:64].lstrip()[:1] == b"{" and body[-64:].rstrip()[-1:] == b"}"


def expects_json(request: Request) -> bool:
    """Datasette's JSON API is every path ending in .json."""
    return urlparse_cached(request).path.endswith(".json")


def public_interval(per_minute: float) -> float:
    """Seconds between requests that keep under `per_minute` in any 60 s window (0 = no limit)."""
    return 60.0 / per_minute * PUBLIC_MARGIN if per_minute > 0 else 0.0


def cap_page_size(url: str, limit: int) -> str:
    """The same URL with `_size` lowered to `limit` if above it; everything else byte for byte."""
    if limit <= 0:
        return url
    return SIZE_PARAM.sub(lambda m: str(min(int(m.group(1)), limit)), url, count=1)


class PublicRateLimit:
    """Add-on: without a service secret, the shared slot goes at civic.band's public pace."""

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        """Scrapy builds add-ons from the crawler."""
        return cls()

    def update_settings(self, settings: BaseSettings) -> None:
        """The shared slot: one request at a time, 60/N s apart, unless DOWNLOAD_SLOTS has it."""
        if settings.get("CIVICBAND_SERVICE_SECRET"):
            return  # trusted: full speed
        limits = check_settings(settings)
        interval = public_interval(limits.public_per_minute)
        slots = settings.getdict("DOWNLOAD_SLOTS")
        if not interval or limits.slot in slots:
            return  # no public limit wanted, or the user configured the slot themselves
        slots[limits.slot] = {"concurrency": 1, "delay": interval, "jitter": 0.0}
        priority = max(settings.getpriority("DOWNLOAD_SLOTS") or 0, SETTINGS_PRIORITIES["addon"])
        settings.set("DOWNLOAD_SLOTS", slots, priority=priority)


class PublicPageCap(BaseSpiderMiddleware):
    """Spider middleware: without the secret, ask for pages no larger than civic.band serves.

    civic.band silently serves 100 rows to a public caller whatever `_size` says; asking for
    exactly that keeps the request honest. Done on the spider's output, before scheduling, so
    a request is never rewritten (and so never rescheduled) once it is on its way.
    """

    def __init__(self, crawler: Crawler) -> None:
        super().__init__(crawler)
        self.limits = check_settings(crawler.settings)
        self._logged = False

    def get_processed_request(self, request: Request, response: Response | None) -> Request:
        """The request, with `_size` lowered if it goes to the shared slot without the secret."""
        if (
            request.meta.get("download_slot") != self.limits.slot
            or request.headers.get(SECRET_HEADER)
            or (capped := cap_page_size(request.url, self.limits.public_page_size)) == request.url
        ):
            return request
        if not self._logged:
            self._logged = True
            logger.info(
                "No service secret: civic.band serves at most %d rows a page, so pages of %d"
                " are asked for (CIVICBAND_PUBLIC_PAGE_SIZE); first: %s",
                self.limits.public_page_size,
                self.limits.public_page_size,
                capped,
            )
        return request.replace(url=capped)


class BackoffRetryMiddleware(RetryMiddleware):
    """Scrapy's RetryMiddleware plus backoff, Datasette's errors, bad bodies and rate limits."""

    def __init__(self, crawler: Crawler) -> None:
        settings = crawler.settings
        if not settings.getbool("RETRY_ENABLED"):
            raise NotConfigured(
                "RETRY_ENABLED is off: no retries, backoff or rate-limit waits"
                " (set RETRY_ENABLED=True to have them)"
            )
        super().__init__(settings)
        self.crawler = crawler
        self.stats = crawler.stats
        self.limits = check_settings(settings)
        # 429 is a rate limit here, waited out, not an error using up RETRY_TIMES.
        self.retry_http_codes.discard(429)
        self._paused_until: dict[str, float] = {}
        self._describe_mode(settings)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        """Build from the crawler's settings (see check_settings for what they may be)."""
        return cls(crawler)

    def _describe_mode(self, settings: BaseSettings) -> None:
        """Say once, at start, which pace the crawl keeps (never the secret itself)."""
        if settings.get("CIVICBAND_SERVICE_SECRET"):
            logger.info("Service secret set: civic.band at full speed (no public limits)")
            return
        slot = settings.getdict("DOWNLOAD_SLOTS").get(self.limits.slot, {})
        logger.info(
            "No CIVICBAND_SERVICE_SECRET: public limits on download slot %r: concurrency %s,"
            " %.2f s between requests (CIVICBAND_PUBLIC_REQUESTS_PER_MINUTE=%g),"
            " pages of at most %d rows",
            self.limits.slot,
            slot.get("concurrency", "default"),
            float(slot.get("delay", settings.getfloat("DOWNLOAD_DELAY"))),
            self.limits.public_per_minute,
            self.limits.public_page_size,
        )

    # ---- before the download ---------------------------------------------------------------

    async def process_request(
        self, request: Request, spider: Spider | None = None
    ) -> Request | None:
        """Wait out this retry's backoff, then any pause of its slot, without blocking."""
        if not self._stopping():
            request.meta.pop(REQUEUED, None)
        key = self._slot_key(request)
        if key == self.limits.slot and not request.headers.get(SECRET_HEADER):
            # AutoThrottle would lower the public pace (its floor is DOWNLOAD_DELAY, not ours).
            request.meta.setdefault("autothrottle_dont_adjust_delay", True)
        attempt = request.meta.get("retry_times", 0)
        if attempt > request.meta.get(BACKOFF_DONE, 0):
            delay = backoff_delay(
                attempt,
                self.limits.backoff_base,
                self.limits.backoff_max,
                self.limits.backoff_jitter,
            )
            self._waiting(request, "backing off")
            if not await self._wait_until(
                time.monotonic() + delay, "civicband/retry/backoff_seconds"
            ):
                return self._requeue(request)
            request.meta[BACKOFF_DONE] = attempt
        while (until := self._paused_until.get(key, 0.0)) > time.monotonic():
            self._waiting(request, "rate limited")
            if not await self._wait_until(until, None):
                return self._requeue(request)
        self._waiting(request, None)
        return None

    def _waiting(self, request: Request, why: str | None) -> None:
        """Say that a request waits (or no longer does), for its job's progress line."""
        self.crawler.signals.send_catch_log(
            civicband_signals.request_waiting, request=request, why=why
        )

    def _slot_key(self, request: Request) -> str:
        """The download slot the downloader will use (Downloader.get_slot_key, without IPs)."""
        slot = request.meta.get("download_slot")
        return slot if slot is not None else (urlparse_cached(request).hostname or "")

    def _stopping(self) -> bool:
        """Ctrl-C / SIGTERM: the crawler stops crawling before the engine waits for requests."""
        return not self.crawler.crawling

    async def _wait_until(self, deadline: float, stat: str | None) -> bool:
        """Sleep without blocking the reactor; False if the crawl began stopping meanwhile."""
        start = time.monotonic()
        try:
            while (left := deadline - time.monotonic()) > 0:
                if self._stopping():
                    return False
                await sleep(min(left, WAIT_STEP))
        finally:
            if stat is not None:
                self.stats.inc_value(stat, time.monotonic() - start)
        return not self._stopping()

    def _requeue(self, request: Request) -> Request:
        """While stopping, a waiting request goes back to the scheduler (kept with JOBDIR).

        Not fetched, and not an error for the spider's errback: its job is paused, not failed.
        One handed straight back (engine.download_async loops on a returned Request) is dropped.
        """
        if request.meta.get(REQUEUED):
            raise IgnoreRequest(f"crawl stopping: not waiting to fetch {request.url}")
        logger.debug("Stopping: %s goes back to the queue instead of waiting", request)
        requeued = request.copy()
        requeued.meta[REQUEUED] = True
        return requeued

    # ---- after the download ----------------------------------------------------------------

    def process_response(
        self, request: Request, response: Response, spider: Spider | None = None
    ) -> Request | Response:
        """Retry what is worth retrying; pass 3xx and other 4xx through unchanged."""
        if request.meta.get("dont_retry", False):
            return response
        status = response.status
        if is_rate_limited(status, response.body):
            return self._rate_limited(request, response)
        if is_interrupted(status, response.body):
            if request.meta.get(SPLIT_ON_INTERRUPT):
                return response
            return self._retry_or_give_up(request, response, "datasette_interrupted")
        if status >= 500 or status in self.retry_http_codes:
            # The parent retries only RETRY_HTTP_CODES; every 5xx is a server trouble here.
            return self._retry_or_give_up(request, response, response_status_message(status))
        if (
            200 <= status < 300
            and expects_json(request)
            and not looks_like_json_object(response.body)
            and self._retries_left(request)
        ):
            # With no retry left, the spider's full parse fails the job with what it saw.
            return self._retry(request, "civicband_not_json") or response
        return response

    def _retries_left(self, request: Request) -> bool:
        """Whether get_retry_request would still give a retry (so it is not counted twice)."""
        limit = request.meta.get("max_retry_times", self.max_retry_times)
        return request.meta.get("retry_times", 0) < limit

    def _retry_or_give_up(
        self, request: Request, response: Response, reason: str
    ) -> Request | Response:
        """A retry, or the response itself for the spider's errback once retries are used up."""
        retry = self._retry(request, reason)
        if retry is None:
            request.meta[RETRIES_EXHAUSTED] = True
            return response
        return retry

    def _rate_limited(self, request: Request, response: Response) -> Request | Response:
        """Pause the request's slot for Retry-After (else the window), then retry uncounted."""
        waits = request.meta.get(RATE_LIMIT_WAITS, 0)
        if waits >= self.limits.rate_limit_max_waits:
            self.stats.inc_value("civicband/ratelimit/gave_up")
            request.meta[RETRIES_EXHAUSTED] = True
            logger.error(
                "Gave up on %s: still rate limited (HTTP %d) after %d waits"
                " (CIVICBAND_RATE_LIMIT_MAX_WAITS)",
                request.url,
                response.status,
                waits,
            )
            return response
        asked = parse_retry_after(response.headers.get("Retry-After"))
        wait = min(RETRY_AFTER_CAP, self.limits.rate_limit_window if asked is None else asked)
        key = self._slot_key(request)
        self._pause(key, wait)
        self.stats.inc_value("civicband/ratelimit/waits")
        logger.info(
            "Rate limited (HTTP %d) at %s: download slot %r waits %.1f s (%s);"
            " wait %d of at most %d",
            response.status,
            request.url,
            key,
            wait,
            "Retry-After" if asked is not None else "CIVICBAND_RATE_LIMIT_WINDOW",
            waits + 1,
            self.limits.rate_limit_max_waits,
        )
        retry = request.copy()
        retry.meta[RATE_LIMIT_WAITS] = waits + 1
        retry.dont_filter = True
        return retry

    def _pause(self, key: str, seconds: float) -> None:
        """Hold every request of the slot: those about to start here, and those it has queued."""
        now = time.monotonic()
        until = now + seconds
        before = self._paused_until.get(key, 0.0)
        if until <= before:
            return
        self.stats.inc_value("civicband/ratelimit/seconds", until - max(before, now))
        self._paused_until[key] = until
        slot = self._downloader_slot(key)
        if slot is not None and slot.delay > 0:
            # Requests already queued in the slot are past process_request. The downloader
            # spaces a slot's requests by `delay` after `lastseen`; moving lastseen ahead holds
            # them too. A slot without a delay (full speed) has no such queue to speak of:
            # its few in-flight requests may meet the limit themselves and wait then.
            slot.lastseen = max(slot.lastseen, until - slot.delay)

    def _downloader_slot(self, key: str) -> Slot | None:
        """The downloader's slot for `key`, if the engine runs and has made it."""
        try:
            return self.crawler.engine.downloader.slots.get(key)
        except (AttributeError, RuntimeError):
            return None
