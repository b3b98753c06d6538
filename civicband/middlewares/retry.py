"""Retries with backoff, Datasette's errors and bad bodies, without blocking the reactor.

Scrapy's RetryMiddleware retries at once: it has no backoff (scrapy#3849) and treats a 429
like any error, using up RETRY_TIMES. `BackoffRetryMiddleware` extends it rather than
replacing it, so `get_retry_request`, RETRY_TIMES, `max_retry_times`, RETRY_EXCEPTIONS and
the `retry/...` stats keep their meaning:

- process_response adds what Scrapy lacks: every 5xx, Datasette's query-interrupted answers
  (500 on 1.0, 400 on 0.65), and a 200 that is plainly not a JSON object are retried; 429 and
  civic.band's 402 `rate_limit_exceeded` pause the whole download slot (ratelimit.py) and are
  retried without counting against RETRY_TIMES.
- process_request (async) sleeps before any retry, wherever it was made (here, or by the
  spider's own get_retry_request), and holds requests of a paused slot. The sleep is
  `scrapy.utils.asyncio.sleep`: the reactor keeps serving other requests meanwhile.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Self

from scrapy import Request, Spider
from scrapy.downloadermiddlewares.retry import RetryMiddleware
from scrapy.exceptions import IgnoreRequest, NotConfigured
from scrapy.http import Response
from scrapy.settings import BaseSettings
from scrapy.utils.asyncio import sleep
from scrapy.utils.httpobj import urlparse_cached
from scrapy.utils.response import response_status_message

from civicband import signals as civicband_signals
from civicband.backoff import backoff_delay
from civicband.config import read_limits
from civicband.datasette import is_interrupted
from civicband.middlewares.meta import (
    BACKOFF_DONE,
    REQUEUED,
    RETRIES_EXHAUSTED,
    SECRET_HEADER,
    SPLIT_ON_INTERRUPT,
)
from civicband.middlewares.ratelimit import SlotPauses, is_rate_limited

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)

# Waits are taken in steps this long so that Ctrl-C / SIGTERM is not held up by a long wait.
WAIT_STEP = 0.5


def looks_like_json_object(body: bytes) -> bool:
    """Cheap test for a whole JSON object: a bot wall or a cut-off body fails it."""
    return body[:64].lstrip()[:1] == b"{" and body[-64:].rstrip()[-1:] == b"}"


def expects_json(request: Request) -> bool:
    """Datasette's JSON API is every path ending in .json."""
    return urlparse_cached(request).path.endswith(".json")


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
        self.limits = read_limits(settings)
        # 429 is a rate limit here, waited out, not an error using up RETRY_TIMES.
        self.retry_http_codes.discard(429)
        # The clock (pauses.clock) and the sleep are replaceable: tests judge waits on their own.
        self.pauses = SlotPauses(crawler, self.limits)
        self.sleep: Callable[[float], Awaitable[object]] = sleep
        self._describe_mode(settings)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        """Build from the crawler's settings (civicband.config says what they may be)."""
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
            deadline = self.pauses.clock() + delay
            if not await self._wait_until(deadline, "civicband/retry/backoff_seconds"):
                return self._requeue(request)
            request.meta[BACKOFF_DONE] = attempt
        while (until := self.pauses.until(key)) > self.pauses.clock():
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
        start = self.pauses.clock()
        try:
            while (left := deadline - self.pauses.clock()) > 0:
                if self._stopping():
                    return False
                await self.sleep(min(left, WAIT_STEP))
        finally:
            if stat is not None:
                self.stats.inc_value(stat, self.pauses.clock() - start)
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
            return self.pauses.limited(request, response, self._slot_key(request))
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
