"""The page transaction: rows, rejected rows, the job's cursor and counters commit together."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Any, Self

import psycopg
from psycopg_pool import PoolTimeout
from scrapy.crawler import Crawler
from scrapy.exceptions import DropItem

from civicband import db, jobs
from civicband.db import query
from civicband.items import CountItem, JobFailed, PageItem, RepairItem
from civicband.rows import PageRows, clean_page
from civicband.store import LEASE_CLASS, Store
from civicband.verify import decide

logger = logging.getLogger(__name__)


class LeaseLost(Exception):
    """Another process took this job over: this one must stop writing it."""


class PostgresPipeline:
    """Store each page in one transaction, in page order per job, while the next page downloads."""

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.stats = crawler.stats
        settings = crawler.settings
        self.db_retries = settings.getint("CIVICBAND_DB_RETRIES")
        self.backoff_base = settings.getfloat("CIVICBAND_BACKOFF_BASE")
        self.backoff_max = settings.getfloat("CIVICBAND_BACKOFF_MAX")
        self.max_missing_rows = settings.getint("CIVICBAND_VERIFY_MAX_MISSING_ROWS")
        self.max_missing_ratio = settings.getfloat("CIVICBAND_VERIFY_MAX_MISSING_RATIO")
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
        elif isinstance(item, RepairItem):
            page = clean_page(item.rows)
            async with self._locks[item.job_id]:
                await self._repair(item, page)
        elif isinstance(item, CountItem):
            async with self._locks[item.job_id]:
                await self._verify(item)
            self._locks.pop(item.job_id, None)
        elif isinstance(item, JobFailed):
            async with self._locks[item.job_id]:
                await self._fail_job(item)
            self._locks.pop(item.job_id, None)
        return item

    async def _store_page(self, item: PageItem, page: PageRows) -> None:
        if item.job_id in self.store.stopped_jobs:
            raise DropItem(f"job {item.job_id} has stopped; page not stored")
        outcome = await self._write_with_retries(item, page)
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
            logger.info(
                "Job %s %s/%s: all pages stored; verifying",
                item.job_id,
                item.subdomain,
                item.document_type,
            )

    async def _write_with_retries(
        self, item: PageItem, page: PageRows
    ) -> tuple[int, int, int] | None:
        """Retry the page's transaction through lost connections and restarts; never skip it."""
        for attempt in range(self.db_retries + 1):
            try:
                return await self._write(item, page)
            except LeaseLost:
                if await self.store.lease_alive() and item.job_id not in self.store.leased:
                    break
                lost = await self._renew()
                if item.job_id in lost:
                    break
            except (psycopg.OperationalError, PoolTimeout, db.DatabaseError) as error:
                if attempt == self.db_retries:
                    await self._database_lost(item, error)
                    raise DropItem("database unreachable") from None
                delay = min(self.backoff_base * 2**attempt, self.backoff_max)
                self.stats.inc_value("civicband/db/retries")
                logger.warning(
                    "Job %s: database trouble (%s); retrying the page in %.1f s",
                    item.job_id,
                    db.one_line(error),
                    delay,
                )
                await asyncio.sleep(delay)
                await self._renew()
            except psycopg.Error as error:
                self.stats.inc_value("civicband/db/errors")
                message = f"database error storing a page of {item.url}: {db.one_line(error)}"
                await self._fail_job(
                    JobFailed(item.job_id, item.subdomain, item.document_type, message)
                )
                raise DropItem(message) from None
        self.stats.inc_value("civicband/jobs/lost")
        logger.warning("Job %s was taken over by another process: stopped here", item.job_id)
        await self._end(item.job_id)
        raise DropItem(f"job {item.job_id} taken over by another process")

    async def _renew(self) -> set[int]:
        """Reconnect the lease connection if it died; jobs another process took meanwhile stop."""
        try:
            lost = await self.store.renew_leases()
        except (psycopg.Error, db.DatabaseError):
            return set()
        for job_id in lost:
            self.store.stopped_jobs.add(job_id)
            self._spider_job_ended(job_id)
        return lost

    async def _database_lost(self, item: PageItem, error: BaseException) -> None:
        """The database stayed down: stop, leaving jobs as they are (abandoned, resumable)."""
        self.stats.inc_value("civicband/db/errors")
        self.store.stopped_jobs.update(self.store.leased)
        logger.error(
            "Database unreachable after %s retries (%s): stopping; jobs stay resumable",
            self.db_retries,
            db.one_line(error),
        )
        engine = self.crawler.engine
        if engine is not None:
            asyncio.ensure_future(engine.close_spider_async(reason="civicband_database_lost"))

    def _spider_job_ended(self, job_id: int) -> None:
        spider = self.crawler.spider
        if spider is not None and hasattr(spider, "job_ended"):
            spider.job_ended(job_id)

    async def _end(self, job_id: int) -> None:
        """The job is over here: stop fetching for it and give its lease back."""
        self._spider_job_ended(job_id)
        await self.store.release(job_id)

    async def close_spider(self) -> None:
        """Jobs still running when the crawl stops (Ctrl-C, SIGTERM) are paused, to resume later."""
        held = sorted(self.store.leased - self.store.stopped_jobs)
        if not held or self.store.pool is None:
            return
        try:
            async with self.store.connection() as conn, conn.transaction():
                await conn.execute(query("pause_jobs"), {"job_ids": held})
        except (psycopg.Error, PoolTimeout) as error:
            logger.error("Could not mark jobs %s paused: %s", held, db.one_line(error))
            return
        self.stats.inc_value("civicband/jobs/paused", len(held))
        logger.info("Paused jobs %s; resume with -a resume=true or the same JOBDIR", held)
        for job_id in held:
            await self.store.release(job_id)

    async def _write(self, item: PageItem, page: PageRows) -> tuple[int, int, int] | None:
        """The transaction; None when this page was already committed (a replayed request)."""
        params = {"subdomain": item.subdomain, "document_type": item.document_type}
        async with self.store.connection() as conn, conn.transaction():
            claim = await (
                await conn.execute(
                    query("claim_cursor"),
                    {
                        "job_id": item.job_id,
                        "cursor_in": item.cursor_in,
                        "class": LEASE_CLASS,
                        "lease_pid": self.store.lease_pid,
                    },
                )
            ).fetchone()
            if claim is None or claim[0] != "running" or not claim[1]:
                return None
            if not claim[2]:
                raise LeaseLost(f"job {item.job_id} is no longer leased by this process")
            created, changed = await self._store_rows(conn, params, item.job_id, page, seen=True)
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
                # The pass is complete: what it did not see, the source no longer has. Pages
                # that moved left their old documents empty until now.
                swept = await conn.execute(query("sweep_unseen"), {**params, "job_id": item.job_id})
                removed = swept.rowcount
                await conn.execute(query("delete_orphan_documents"), params)
                await conn.execute(query("forget_seen"), {"job_id": item.job_id})
                await conn.execute(query("mark_exhausted"), {"job_id": item.job_id})
                if removed:
                    self.stats.inc_value("civicband/verify/removed", removed)
                    logger.info(
                        "Job %s %s/%s: removed %s pages the source no longer has",
                        item.job_id,
                        item.subdomain,
                        item.document_type,
                        removed,
                    )
        return created, updated, changed

    async def _verify(self, item: CountItem) -> None:
        """Compare the source's count with the mirror; record it and finish the job by it."""
        if item.job_id in self.store.stopped_jobs:
            return
        params = {"subdomain": item.subdomain, "document_type": item.document_type}
        try:
            async with self.store.connection() as conn, conn.transaction():
                row = await (await conn.execute(query("local_counts"), params)).fetchone()
                assert row is not None
                verdict = decide(
                    item.expected,
                    int(row[0]),
                    int(row[1]),
                    max_rows=self.max_missing_rows,
                    max_ratio=self.max_missing_ratio,
                )
                await conn.execute(
                    query("record_verification"),
                    {
                        "job_id": item.job_id,
                        "expected": verdict.expected,
                        "actual": verdict.actual,
                        "rejected": verdict.rejected,
                        "missing": verdict.missing,
                        "verify_status": verdict.status,
                        "status": verdict.job_status,
                        "message": verdict.message,
                    },
                )
        except (psycopg.Error, PoolTimeout) as error:
            self.stats.inc_value("civicband/db/errors")
            logger.error(
                "Job %s: could not record verification: %s", item.job_id, db.one_line(error)
            )
            await self._end(item.job_id)
            return
        await self._cross_check(item.subdomain)
        stats = self.stats
        stats.inc_value(f"civicband/verify/{verdict.status}")
        if verdict.missing is not None and verdict.missing > 0:
            stats.inc_value("civicband/verify/missing", verdict.missing)
        if verdict.missing is not None and verdict.missing < 0:
            stats.inc_value("civicband/verify/extra", -verdict.missing)
        if verdict.rejected:
            stats.inc_value("civicband/verify/rejected", verdict.rejected)
        stats.inc_value(f"civicband/jobs/{verdict.job_status}")
        level = {"passed": logging.INFO, "unknown": logging.WARNING, "warned": logging.WARNING}
        note = f" ({item.note})" if item.note else ""
        logger.log(
            level.get(verdict.status, logging.ERROR),
            "Job %s %s/%s %s: verification %s: %s%s",
            item.job_id,
            item.subdomain,
            item.document_type,
            verdict.job_status,
            verdict.status,
            verdict.message,
            note,
        )
        await self._end(item.job_id)

    async def _repair(self, item: RepairItem, page: PageRows) -> None:
        """Store the pages repair fetched and delete those a complete bucket listing lacks."""
        if item.job_id in self.store.stopped_jobs:
            raise DropItem(f"job {item.job_id} has stopped; repair not stored")
        params = {"subdomain": item.subdomain, "document_type": item.document_type}
        try:
            async with self.store.connection() as conn, conn.transaction():
                created, _ = await self._store_rows(conn, params, item.job_id, page, seen=False)
                deleted = 0
                if item.delete_ids:
                    cursor = await conn.execute(
                        query("delete_pages"), {**params, "ids": item.delete_ids}
                    )
                    deleted = cursor.rowcount
                    await conn.execute(query("delete_orphan_documents"), params)
                await conn.execute(
                    query("count_repair"),
                    {
                        "job_id": item.job_id,
                        "fetched": len(item.rows),
                        "created": created,
                        "updated": len(page.clean) - created,
                        "errors": len(page.rejected),
                    },
                )
        except (psycopg.Error, PoolTimeout) as error:
            self.stats.inc_value("civicband/db/errors")
            message = f"database error during repair at {item.url}: {db.one_line(error)}"
            await self._fail_job(
                JobFailed(item.job_id, item.subdomain, item.document_type, message)
            )
            raise DropItem(message) from None
        self.stats.inc_value("civicband/repair/fetched", len(item.rows))
        self.stats.inc_value("civicband/repair/created", created)
        self.stats.inc_value("civicband/repair/deleted", deleted)
        self.stats.inc_value("civicband/rows/rejected", len(page.rejected))
        self.stats.inc_value("civicband/rows/nul_removed", page.nul_removed)
        if created or deleted:
            logger.info(
                "Job %s %s/%s repair: %s pages fetched, %s deleted",
                item.job_id,
                item.subdomain,
                item.document_type,
                created,
                deleted,
            )

    async def _store_rows(
        self,
        conn: psycopg.AsyncConnection,
        params: dict[str, Any],
        job_id: int,
        page: PageRows,
        *,
        seen: bool,
    ) -> tuple[int, int]:
        """Upsert a page's clean rows and quarantine its bad ones: (created, changed)."""
        created = changed = 0
        if page.clean:
            async with conn.cursor().copy(query("copy_staging")) as copy:
                # copy_staging is a binary COPY: PostgreSQL takes the rows without parsing text,
                # which costs it about a third less than text format.
                copy.set_types(page.copy_types)
                for row in page.clean:
                    await copy.write_row(row)
            await conn.execute(query("upsert_documents"), params)
            if seen:
                await conn.execute(query("remember_seen"), {"job_id": job_id})
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
                            "job_id": job_id,
                        }
                        for rejection in page.rejected
                    ],
                )
        return created, changed

    async def _cross_check(self, subdomain: str) -> None:
        """Report when the index's page total disagrees with the source's own counts."""
        try:
            async with self.store.connection() as conn:
                cursor = await conn.execute(query("index_cross_check"), {"subdomain": subdomain})
                row = await cursor.fetchone()
        except (psycopg.Error, PoolTimeout) as error:
            logger.warning("%s: index cross-check skipped: %s", subdomain, db.one_line(error))
            return
        if row is None or None in row:
            return
        listed, agendas, minutes = (int(value) for value in row)
        if listed != agendas + minutes:
            self.stats.inc_value("civicband/verify/index_mismatch")
            logger.warning(
                "%s: civic.band's index lists %s pages, its sites count %s agendas + %s minutes",
                subdomain,
                listed,
                agendas,
                minutes,
            )

    async def _fail_job(self, item: JobFailed) -> None:
        """Mark the job failed with why; its cursor stays for resume."""
        self.store.stopped_jobs.add(item.job_id)
        self._spider_job_ended(item.job_id)
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
        await self.store.release(item.job_id)
