"""Admit only the page each running job needs next: no stale or duplicate fetches."""

from __future__ import annotations

import logging
from typing import Any, Self

from scrapy import Request, Spider
from scrapy.crawler import Crawler
from scrapy.exceptions import IgnoreRequest, NotConfigured

from civicband.registry import Registry

logger = logging.getLogger(__name__)


class CursorGate:
    """Drop page requests the registry does not want: not our job, or not its next page.

    Requests restored from JOBDIR may be for pages already committed (the database's cursor is
    the truth), or for jobs another process holds now. Dropping one is never a failure: the
    spider's errback ignores IgnoreRequest.
    """

    def __init__(self, crawler: Crawler, registry: Registry) -> None:
        self.crawler = crawler
        self.registry = registry

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        """Pages belong to the registry's jobs: without it there is nothing to admit."""
        registry = crawler.get_extension(Registry)
        if registry is None:
            raise NotConfigured("CursorGate needs civicband.registry.Registry in EXTENSIONS")
        return cls(crawler, registry)

    def process_request(self, request: Request, spider: Spider | None = None) -> Any:
        """Admit the request or drop it before download."""
        if "cursor" not in request.meta:
            return None
        reason = self.registry.admit(request)
        if reason is None:
            return None
        self.crawler.stats.inc_value("civicband/requests/dropped")
        logger.info(
            "Dropped a request for job %s (%s): %s", request.meta.get("job_id"), reason, request.url
        )
        raise IgnoreRequest(f"job {request.meta.get('job_id')}: {reason}")
