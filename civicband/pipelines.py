"""The page transaction: rows, rejected rows, the job's cursor and counters commit together."""

from __future__ import annotations

import logging
from typing import Any, Self

from scrapy.crawler import Crawler
from scrapy.exceptions import DropItem
from scrapy.statscollectors import StatsCollector

from civicband import db, jobs, mirror
from civicband.items import PageItem
from civicband.registry import ActiveJob, Registry
from civicband.rows import PageRows, clean_page
from civicband.store import Store

logger = logging.getLogger(__name__)


class PageWriter:
    """Write rows of one job in one fenced transaction each, and count what they did."""

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.stats = crawler.stats

    @property
    def store(self) -> Store:
        """The crawl's database."""
        store = self.crawler.get_extension(Store)
        assert store is not None, "civicband.store.Store must be in EXTENSIONS"
        return store

    async def page(self, job: ActiveJob, item: PageItem, page: PageRows) -> mirror.Stored | None:
        """A full pass's page with its cursor; None when it was stored already (a replay)."""

        async def work(conn: Any) -> mirror.Stored | None:
            if not await jobs.lock_for_page(conn, job.lease, item.cursor_in):
                return None
            stored = await mirror.store_rows(
                conn, job.subdomain, job.document_type, job.job_id, page, remember=True
            )
            await jobs.advance(
                conn,
                job.lease,
                cursor_out=item.cursor_out,
                fetched=len(item.rows),
                created=stored.created,
                updated=stored.updated,
                changed=stored.changed,
                restored=stored.restored,
                errors=page.rejected_rows,
                removed=stored.dropped,
                final=item.final,
            )
            return stored

        stored = await self.store.transact(work, f"storing a page of {job.lease}")
        if stored is not None:
            self._count(job, len(item.rows), stored, page)
            self.stats.inc_value("civicband/batches/committed")
        return stored

    async def rows(self, job: ActiveJob, rows: list[Any], page: PageRows) -> mirror.Stored | None:
        """Rows a catch-up fetched by id; None when they were stored already (a replay).

        Each batch moves the job's cursor from one batch number to the next, as a page does,
        so a retried commit that had in fact succeeded is found out and counted once.
        """
        cursor_out = catch_up_batch(job.cursor)

        async def work(conn: Any) -> mirror.Stored | None:
            if not await jobs.lock_for_page(conn, job.lease, job.cursor):
                return None
            stored = await mirror.store_rows(
                conn, job.subdomain, job.document_type, job.job_id, page, remember=False
            )
            await jobs.advance(
                conn,
                job.lease,
                cursor_out=cursor_out,
                fetched=len(rows),
                created=stored.created,
                updated=stored.updated,
                changed=stored.changed,
                restored=stored.restored,
                errors=page.rejected_rows,
                removed=stored.dropped,
                final=False,
            )
            return stored

        stored = await self.store.transact(work, f"storing rows of {job.lease}")
        job.cursor = cursor_out
        if stored is None:
            self.stats.inc_value("civicband/pages/duplicates_dropped")
            return None
        self._count(job, len(rows), stored, page)
        return stored

    def _count(self, job: ActiveJob, fetched: int, stored: mirror.Stored, page: PageRows) -> None:
        stats = self.stats
        job.rows_done += fetched
        stats.inc_value("civicband/rows/fetched", fetched)
        stats.inc_value("civicband/rows/created", stored.created)
        stats.inc_value("civicband/rows/updated", stored.updated)
        stats.inc_value("civicband/rows/changed", stored.changed)
        stats.inc_value("civicband/rows/unrejected", stored.unrejected)
        stats.inc_value("civicband/pages/replaced_by_rejection", stored.dropped)
        count_changes(
            stats,
            created=stored.created,
            changed=stored.changed,
            removed=stored.dropped,
            restored=stored.restored,
        )
        stats.inc_value("civicband/rows/rejected", page.rejected_rows)
        stats.inc_value("civicband/rows/nul_removed", page.nul_removed)
        for rejection in page.rejected:
            logger.warning(
                "Rejected a row of %s/%s (id %r): %s",
                job.subdomain,
                job.document_type,
                rejection.row_id,
                rejection.reason,
            )


def count_changes(stats: StatsCollector, **changes: int) -> None:
    """The change feed's entries a job wrote, by kind: civicband/changes/<kind> (stats table)."""
    for kind, value in changes.items():
        if value:
            stats.inc_value(f"civicband/changes/{kind}", value)


def catch_up_batch(cursor: str | None) -> str:
    """The cursor a catch-up's next batch of rows leaves behind: `catch-up batch N`."""
    done = int(cursor.rsplit(" ", 1)[1]) if cursor and cursor.startswith("catch-up batch ") else 0
    return f"catch-up batch {done + 1}"


async def guarded_write(registry: Registry, job: ActiveJob, what: str, write: Any) -> Any:
    """Run a job's write; whatever goes wrong ends the job one way, said once, never silently.

    A lost lease stops the job here; a database that stays down stops the crawl (jobs stay
    resumable); any other database error, or anything unexpected (a bug, a value the driver
    refuses), fails the job with the reason.
    """
    try:
        return await write
    except jobs.LeaseLost:
        await registry.lost(job)
    except db.DatabaseUnavailable as error:
        await registry.database_lost(error)
    except db.DatabaseError as error:
        registry.stats.inc_value("civicband/db/errors")
        await registry.fail(job, f"database error {what}: {error}")
    except Exception as error:
        logger.exception("%s: unexpected error %s", job, what)
        await registry.fail(
            job, f"unexpected error {what}: {type(error).__name__}: {db.one_line(error)}"
        )
    raise DropItem(f"{job}: not stored")


class PostgresPipeline:
    """Store each page in one transaction, in page order per job, while the next page downloads."""

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.stats = crawler.stats
        self.writer = PageWriter(crawler)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        """Build the pipeline; the registry and store are looked up when items arrive."""
        return cls(crawler)

    @property
    def registry(self) -> Registry:
        """This process's jobs."""
        registry = self.crawler.get_extension(Registry)
        assert registry is not None, "civicband.registry.Registry must be in EXTENSIONS"
        return registry

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
            what = f"storing a page of {item.url}"
            stored = await guarded_write(registry, job, what, self.writer.page(job, item, page))
        if stored is None:
            self.stats.inc_value("civicband/pages/duplicates_dropped")
            if item.final:
                registry.exhausted(job)
            raise DropItem(f"page of job {item.job_id} already stored (cursor {item.cursor_in!r})")
        if item.final:
            logger.info("%s: all pages stored; verifying", job)
            registry.exhausted(job)
        return item
