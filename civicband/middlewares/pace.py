"""civic.band's public limits without a service secret: 15 JSON requests a minute, 100-row pages.

`PublicRateLimit` is an add-on because DOWNLOAD_SLOTS must be settled before settings freeze;
`PublicPageCap` is a spider middleware, so a request is capped before it is scheduled.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Self

from scrapy import Request
from scrapy.http import Response
from scrapy.settings import SETTINGS_PRIORITIES, BaseSettings
from scrapy.spidermiddlewares.base import BaseSpiderMiddleware

from civicband.config import read_limits
from civicband.middlewares.meta import SECRET_HEADER

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)

# Spacing of exactly 60/N s puts request N+1 on the edge of a 60 s sliding window; network
# jitter could then land it inside. 5 % more keeps it clear.
PUBLIC_MARGIN = 1.05
SIZE_PARAM = re.compile(r"(?<=[?&]_size=)(\d+)(?=&|$)")


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
        limits = read_limits(settings)
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
        self.limits = read_limits(crawler.settings)
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
