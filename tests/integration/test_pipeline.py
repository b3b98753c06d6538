"""The page pipeline on a real PostgreSQL: a replayed page is dropped, never stored twice.

No Datasette here: PageItems go straight into civicband.pipelines.PostgresPipeline on a crawler
with the project's settings, its Store and Registry, as the spider would hand them over after
a kill -9, a JOBDIR restore or a retried request.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from scrapy.exceptions import DropItem
from scrapy.utils.test import get_crawler

from civicband import jobs
from civicband import settings as project
from civicband.items import PageItem
from civicband.lifecycle import VERIFYING, ActiveJob
from civicband.pipelines import PostgresPipeline
from civicband.registry import Registry
from civicband.spiders.civicband import CivicbandSpider
from civicband.store import Store

SITE = "replay.ca"
DUPLICATES = "civicband/pages/duplicates_dropped"


def row(row_id: str, page: int) -> dict[str, Any]:
    return {
        "id": row_id,
        "meeting": "City Council",
        "date": "2024-01-02",
        "page": page,
        "text": f"Page {page}",
        "page_image": None,
        "entities_json": None,
        "votes_json": None,
    }


def crawler_for(database_url: str, home: Path) -> Any:
    values = {name: getattr(project, name) for name in dir(project) if name.isupper()}
    values.update(
        {
            "EXTENSIONS": {"civicband.store.Store": 0, "civicband.source.Source": 1},
            "CIVICBAND_DATABASE_URL": database_url,
            "CIVICBAND_HOME": str(home),
        }
    )
    return get_crawler(CivicbandSpider, values)


async def held_job(crawler: Any) -> ActiveJob:
    """A job queued, claimed and held by this crawler, as the spider's start would leave it."""
    store = crawler.get_extension(Store)
    await store.open()
    arguments = jobs.RunArguments((SITE,), ("agenda",), "default", False)

    async def work(conn: Any) -> tuple[int, list[jobs.Claim]]:
        await jobs.add_municipality(conn, SITE)
        run_id, _ = await jobs.open_run(conn, arguments, store.join_run)
        await jobs.enqueue(conn, run_id, [(SITE, "agenda")], mode="default", resume=False)
        return run_id, await jobs.claim(conn, run_id, 1, store.try_lease)

    run_id, (claim,) = await store.transact(work, "queueing")
    registry = crawler.get_extension(Registry)
    registry.spider_opened()  # wired as when the spider opens
    job = registry.add(claim, run_id, allow_shrink=False, repair=False)
    job.move(job.first_step())  # paging, as the registry starts a full pass
    return job


def page(job: ActiveJob, cursor_in: str | None, cursor_out: str | None, rows: list) -> PageItem:
    return PageItem(
        job_id=job.job_id,
        token=job.lease.token,
        subdomain=SITE,
        document_type="agenda",
        cursor_in=cursor_in,
        cursor_out=cursor_out,
        rows=rows,
        url=f"https://{SITE}.civic.band/meetings/agendas.json",
    )


def test_a_replayed_page_is_dropped_and_counts_nothing_twice(database_url, tmp_path):
    crawler = crawler_for(database_url, tmp_path / ".civicband")

    async def scenario() -> tuple[list[str], ActiveJob]:
        job = await held_job(crawler)
        pipeline = PostgresPipeline.from_crawler(crawler)
        first = page(job, None, "c1", [row("aaaaaaaaaaa1", 1)])
        last = page(job, "c1", None, [row("aaaaaaaaaaa2", 2)])
        outcomes = []
        try:
            for item in (first, first, last, last):
                try:
                    await pipeline.process_item(item)
                    outcomes.append("stored")
                except DropItem:
                    outcomes.append("dropped")
        finally:
            # The verification the last page started is not this test's: stopped before the store.
            steps = list(job.tasks)
            for step in steps:
                step.cancel()
            await asyncio.gather(*steps, return_exceptions=True)
            await crawler.get_extension(Store).close()
        return outcomes, job

    outcomes, job = asyncio.run(scenario())
    assert outcomes == ["stored", "dropped", "stored", "dropped"]
    stats = crawler.stats
    assert stats.get_value(DUPLICATES) == 2
    assert stats.get_value("civicband/batches/committed") == 2
    assert (
        stats.get_value("civicband/rows/fetched"),
        stats.get_value("civicband/rows/created"),
    ) == (
        2,
        2,
    )
    assert job.state == VERIFYING  # the last page, even replayed, leaves only verification
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        stored = conn.execute(
            "SELECT pages_fetched, pages_created, pages_updated, batches_committed, last_cursor"
            " FROM backfill_jobs WHERE id = %s",
            [job.job_id],
        ).fetchone()
        pages = conn.execute("SELECT count(*) AS n FROM meeting_pages").fetchone()["n"]
    assert stored == {
        "pages_fetched": 2,
        "pages_created": 2,
        "pages_updated": 0,
        "batches_committed": 2,
        "last_cursor": None,
    }
    assert pages == 2


@pytest.mark.parametrize("token_offset", [1, -1])
def test_a_page_fetched_under_another_lease_is_not_stored(database_url, tmp_path, token_offset):
    crawler = crawler_for(database_url, tmp_path / ".civicband")

    async def scenario() -> ActiveJob:
        job = await held_job(crawler)
        pipeline = PostgresPipeline.from_crawler(crawler)
        item = page(job, None, "c1", [row("aaaaaaaaaaa1", 1)])
        item.token = job.lease.token + token_offset
        try:
            with pytest.raises(DropItem, match="not held here"):
                await pipeline.process_item(item)
        finally:
            await crawler.get_extension(Store).close()
        return job

    job = asyncio.run(scenario())
    assert crawler.stats.get_value(DUPLICATES) is None
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM meeting_pages").fetchone()[0] == 0
        fetched = conn.execute(
            "SELECT pages_fetched FROM backfill_jobs WHERE id = %s", [job.job_id]
        ).fetchone()
    assert fetched == (0,)
