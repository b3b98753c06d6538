"""The page transaction: rows, rejected rows, the job's cursor and counters commit together."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Any, Self

import psycopg
from scrapy.crawler import Crawler
from scrapy.exceptions import DropItem

from civicband import db, jobs
from civicband.db import query
from civicband.items import JobFailed, PageItem
from civicband.rows import PageRows, clean_page
from civicband.store import Store

logger = logging.getLogger(__name__)


class PostgresPipeline:
    """Store each page in one transaction, in page order per job, while the next page downloads."""

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.stats = crawler.stats
        # Items of one job are written one at a time, in the order they arrive (Lock is FIFO).
        self._locks: defaultdict[int, asyncio.Lock] = defaultdict(asyncio.Lock)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        """Build the pipeline; the store is looked up when the spider opens."""
        return cls(crawler)

    @property
    def store(self) -> Store:
        """The crawl's database, opened by the spider before any item exists."""
        store = self.crawler.get_extension(Store)
        assert store is not None, "civicband.store.Store must be in EXTENSIONS"
        return store

    async def process_item(self, item: Any) -> Any:
        """Write a page or record a job's end; anything else passes through."""
        if isinstance(item, PageItem):
            # Cleaning is CPU work: do it before waiting for the previous page's transaction.
            page = clean_page(item.rows)
            async with self._locks[item.job_id]:
                await self._store_page(item, page)
        elif isinstance(item, JobFailed):
            async with self._locks[item.job_id]:
                await self._fail_job(item)
            self._locks.pop(item.job_id, None)
        return item

    async def _store_page(self, item: PageItem, page: PageRows) -> None:
        if item.job_id in self.store.stopped_jobs:
            raise DropItem(f"job {item.job_id} has stopped; page not stored")
        try:
            outcome = await self._write(item, page)
        except psycopg.Error as error:
            self.store.stopped_jobs.add(item.job_id)
            self.stats.inc_value("civicband/db/errors")
            message = f"database error storing a page of {item.url}: {db.one_line(error)}"
            logger.error(
                "Job %s %s/%s: %s", item.job_id, item.subdomain, item.document_type, message
            )
            await self._fail_job(
                JobFailed(item.job_id, item.subdomain, item.document_type, message)
            )
            raise DropItem(message) from None
        if outcome is None:
            self.stats.inc_value("civicband/pages/duplicates_dropped")
            raise DropItem(f"page of job {item.job_id} already stored (cursor {item.cursor_in!r})")
        created, updated, changed = outcome
        stats = self.stats
        stats.inc_value("civicband/batches/committed")
        stats.inc_value("civicband/rows/fetched", len(item.rows))
        stats.inc_value("civicband/rows/created", created)
        stats.inc_value("civicband/rows/updated", updated)
        stats.inc_value("civicband/rows/changed", changed)
        stats.inc_value("civicband/rows/rejected", len(page.rejected))
        stats.inc_value("civicband/rows/nul_removed", page.nul_removed)
        for rejection in page.rejected:
            logger.warning(
                "Rejected a row of %s/%s (id %r): %s",
                item.subdomain,
                item.document_type,
                rejection.row_id,
                rejection.reason,
            )
        if item.final:
            stats.inc_value("civicband/jobs/completed")
            self._locks.pop(item.job_id, None)
            logger.info("Job %s %s/%s completed", item.job_id, item.subdomain, item.document_type)

    async def _write(self, item: PageItem, page: PageRows) -> tuple[int, int, int] | None:
        """The transaction; None when this page was already committed (a replayed request)."""
        params = {"subdomain": item.subdomain, "document_type": item.document_type}
        async with self.store.connection() as conn, conn.transaction():
            claim = await (
                await conn.execute(
                    query("claim_cursor"), {"job_id": item.job_id, "cursor_in": item.cursor_in}
                )
            ).fetchone()
            if claim is None or claim[0] != "running" or not claim[1]:
                return None
            created = changed = 0
            if page.clean:
                async with conn.cursor().copy(query("copy_staging")) as copy:
                    for row in page.clean:
                        await copy.write_row(row.as_tuple())
                await conn.execute(query("upsert_documents"), params)
                counts = await (await conn.execute(query("upsert_pages"), params)).fetchone()
                assert counts is not None
                created, changed = int(counts[0]), int(counts[1])
            if page.rejected:
                async with conn.cursor() as cursor:
                    await cursor.executemany(
                        query("reject_row"),
                        [
                            {
                                **params,
                                "row_id": rejection.row_id,
                                "reason": rejection.reason,
                                "raw": rejection.raw,
                                "job_id": item.job_id,
                            }
                            for rejection in page.rejected
                        ],
                    )
            updated = len(page.clean) - created
            await conn.execute(
                query("advance_job"),
                {
                    "job_id": item.job_id,
                    "cursor_out": item.cursor_out,
                    "fetched": len(item.rows),
                    "created": created,
                    "updated": updated,
                    "errors": len(page.rejected),
                },
            )
            if item.final:
                # Once per pass rather than per page: a page that moved leaves its old document
                # empty until the job's last page, and no longer.
                await conn.execute(query("delete_orphan_documents"), params)
                await jobs.finish_job(conn, item.job_id, "completed")
        return created, updated, changed

    async def _fail_job(self, item: JobFailed) -> None:
        """Mark the job failed with why; its cursor stays for resume."""
        self.store.stopped_jobs.add(item.job_id)
        self.stats.inc_value("civicband/jobs/failed")
        logger.error(
            "Job %s %s/%s failed: %s", item.job_id, item.subdomain, item.document_type, item.error
        )
        try:
            async with self.store.connection() as conn, conn.transaction():
                await jobs.finish_job(
                    conn,
                    item.job_id,
                    "failed",
                    last_error=item.error,
                    retry_increment=1 if item.retries_exhausted else 0,
                )
        except psycopg.Error as error:
            self.stats.inc_value("civicband/db/errors")
            logger.error(
                "Job %s: could not record its failure: %s", item.job_id, db.one_line(error)
            )
