"""The page transaction: rows, rejected rows, the job's cursor and counters commit together.

Each write is one fenced step of its job (`Registry.run_step`): a page of a full pass with the
cursor after it, or a batch of rows a catch-up fetched by id with its batch number.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from scrapy.statscollectors import StatsCollector

from civicband import jobs, mirror
from civicband.items import PageItem
from civicband.lifecycle import ActiveJob
from civicband.rows import PageRows

if TYPE_CHECKING:
    from civicband.registry import Registry

logger = logging.getLogger(__name__)


class PageWriter:
    """Write rows of one job in one fenced transaction each, and count what they did."""

    def __init__(self, registry: Registry, stats: StatsCollector) -> None:
        self.registry = registry
        self.stats = stats

    async def page(self, job: ActiveJob, item: PageItem, page: PageRows) -> mirror.Stored | None:
        """A full pass's page with its cursor; None when it was stored already (a replay)."""

        async def work(conn: Any) -> mirror.Stored | None:
            if not await jobs.lock_for_page(conn, job.lease, item.cursor_in):
                return None
            stored = await mirror.store_rows(
                conn, job.subdomain, job.document_type, job.job_id, page, remember=True
            )
            await _advance(
                conn, job, item.cursor_out, fetched=len(item.rows), stored=stored, page=page
            )
            return stored

        stored = await self.registry.run_step(job, f"storing a page of {item.url}", work)
        if stored is not None:
            self._count(job, len(item.rows), stored, page)
            self.stats.inc_value("civicband/batches/committed")
        return stored

    async def rows(self, job: ActiveJob, rows: list[Any], page: PageRows) -> mirror.Stored | None:
        """Rows a catch-up fetched by id; None when they were stored already (a replay).

        Each batch moves the job's cursor from one batch number to the next, as a page does,
        so a retried commit that had in fact succeeded is found out and counted once.
        """
        cursor_in = job.cursor
        cursor_out = catch_up_batch(cursor_in)

        async def work(conn: Any) -> mirror.Stored | None:
            if not await jobs.lock_for_page(conn, job.lease, cursor_in):
                return None
            stored = await mirror.store_rows(
                conn, job.subdomain, job.document_type, job.job_id, page, remember=False
            )
            await _advance(conn, job, cursor_out, fetched=len(rows), stored=stored, page=page)
            return stored

        stored = await self.registry.run_step(job, "storing fetched rows", work)
        job.stored(0, cursor_out, batch=True)
        if stored is None:
            self.stats.inc_value("civicband/pages/duplicates_dropped")
            return None
        self._count(job, len(rows), stored, page)
        return stored

    def _count(self, job: ActiveJob, fetched: int, stored: mirror.Stored, page: PageRows) -> None:
        stats = self.stats
        job.stored(fetched)
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


async def _advance(
    conn: Any,
    job: ActiveJob,
    cursor_out: str | None,
    *,
    fetched: int,
    stored: mirror.Stored,
    page: PageRows,
) -> None:
    """The job's cursor and counters move with the rows, in their transaction (fenced)."""
    await jobs.advance(
        conn,
        job.lease,
        cursor_out=cursor_out,
        fetched=fetched,
        created=stored.created,
        updated=stored.updated,
        changed=stored.changed,
        restored=stored.restored,
        errors=page.rejected_rows,
        removed=stored.dropped,
        final=cursor_out is None,
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
