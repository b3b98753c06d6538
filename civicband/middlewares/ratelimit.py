"""Rate-limit waits: a 429 or civic.band's 402 pauses the whole download slot, uncounted."""

from __future__ import annotations

import datetime
import email.utils
import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from scrapy import Request
from scrapy.http import Response

from civicband.config import Limits
from civicband.middlewares.meta import RATE_LIMIT_WAITS, RETRIES_EXHAUSTED

if TYPE_CHECKING:
    from scrapy.core.downloader import Slot
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)

# A Retry-After of days would stall the crawl silently; an hour is already far past civic.band's
# one-minute window.
RETRY_AFTER_CAP = 3600.0


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


class SlotPauses:
    """The one owner of each download slot's pause: set by rate-limit answers, read before sends."""

    def __init__(
        self, crawler: Crawler, limits: Limits, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.crawler = crawler
        self.stats = crawler.stats
        self.limits = limits
        self.clock = clock
        self._paused_until: dict[str, float] = {}

    def until(self, key: str) -> float:
        """When the slot's pause ends (in the past, or 0, when it is not paused)."""
        return self._paused_until.get(key, 0.0)

    def limited(self, request: Request, response: Response, key: str) -> Request | Response:
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
        self.pause(key, wait)
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

    def pause(self, key: str, seconds: float) -> None:
        """Hold every request of the slot: those about to start here, and those it has queued."""
        now = self.clock()
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
