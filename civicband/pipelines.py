"""The item pipeline: each page of a full pass stored in one fenced transaction, in order."""

from __future__ import annotations

import logging
from typing import Any, Self

from scrapy.crawler import Crawler
from scrapy.exceptions import DropItem, NotConfigured

from civicband.items import PageItem
from civicband.registry import JobEnded, Registry
from civicband.rows import clean_page

logger = logging.getLogger(__name__)


class PostgresPipeline:
    """Store each page in one transaction, in page order per job, while the next page downloads."""

    def __init__(self, crawler: Crawler, registry: Registry) -> None:
        self.stats = crawler.stats
        self.registry = registry

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        """Pages belong to the registry's jobs: without it there is nothing to store them for."""
        registry = crawler.get_extension(Registry)
        if registry is None:
            raise NotConfigured("PostgresPipeline needs civicband.registry.Registry in EXTENSIONS")
        return cls(crawler, registry)

    async def process_item(self, item: Any) -> Any:
        """Write a page of a job this process holds; anything else passes through."""
        if not isinstance(item, PageItem):
            return item
        registry = self.registry
        job = registry.get(item.job_id, item.token)
        if job is None:
            raise DropItem(f"job {item.job_id} is not held here any more; page not stored")
        # Cleaning is CPU work: do it before waiting for the previous page's transaction.
        page = clean_page(item.rows, unicode_checked=item.unicode_checked)
        async with job.write_lock:  # a job's pages are written one at a time, in order (FIFO)
            if registry.get(item.job_id, item.token) is None:
                raise DropItem(f"job {item.job_id} stopped; page not stored")
            try:
                stored = await registry.writer.page(job, item, page)
            except JobEnded:
                raise DropItem(f"{job}: not stored (the job ended)") from None
        registry.page_stored(job, final=item.final)
        if stored is None:
            self.stats.inc_value("civicband/pages/duplicates_dropped")
            raise DropItem(f"page of job {item.job_id} already stored (cursor {item.cursor_in!r})")
        return item
