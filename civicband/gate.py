"""Admit only the page each running job needs next: no stale or duplicate fetches."""

from __future__ import annotations

import logging
from typing import Any, Self

from scrapy import Request, Spider
from scrapy.crawler import Crawler
from scrapy.exceptions import IgnoreRequest, NotConfigured

from civicband.middlewares import RATE_LIMIT_WAITS

logger = logging.getLogger(__name__)


class CursorGate:
    """Drop requests whose job is not ours or whose cursor is not the job's next page.

    Requests restored from JOBDIR may be for pages already committed (the database's
    cursor is the truth), or for jobs another process has taken over since.
    """

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        """Only the civicband spider keeps the job table this gate reads."""
        if crawler.spidercls.name != "civicband":
            raise NotConfigured("CursorGate serves the civicband spider only")
        return cls(crawler)

    async def process_request(self, request: Request, spider: Spider | None = None) -> Any:
        """Wait until start() has claimed its jobs, then admit or drop the request."""
        job_id = request.meta.get("job_id")
        if job_id is None or "cursor" not in request.meta:
            return None
        owner: Any = self.crawler.spider
        await owner.ready.wait()
        # A retry, or a page asked again after a rate limit (which keeps retry_times on purpose).
        retry = request.meta.get("retry_times", 0) > 0 or request.meta.get(RATE_LIMIT_WAITS, 0) > 0
        expected = owner.active.get(job_id, False)
        if expected is False or expected != request.meta["cursor"]:
            reason = "not running here" if expected is False else "not its next page"
        elif job_id in owner.inflight and not retry:
            reason = "already being fetched"
        else:
            owner.inflight.add(job_id)
            return None
        self.crawler.stats.inc_value("civicband/requests/dropped")
        logger.info("Dropped a request for job %s (%s): %s", job_id, reason, request.url)
        raise IgnoreRequest(f"job {job_id}: {reason}")
