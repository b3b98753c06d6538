"""Writes whose COMMIT answer is lost: Store.transact retries them, and each counts once.

A TCP proxy (tests/pgproxy.py) in front of the real PostgreSQL lets one COMMIT through and cuts
the connection before its answer: the transaction committed, the crawl cannot know, and its
retry must find that out instead of applying the write again.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row

from civicband import digest
from civicband.registry import Registry
from civicband.rows import clean_page
from civicband.store import Store
from tests.integration.test_pipeline import crawler_for, held_job, page, row
from tests.pgproxy import Proxy


def proxied(url: str, marker: bytes) -> tuple[str, Proxy]:
    """The database URL through a proxy that loses the COMMIT answer of `marker`'s transaction."""
    info = conninfo_to_dict(url)
    proxy = Proxy(info.get("host") or "127.0.0.1", int(info.get("port") or 5432), marker)
    info.update(host="127.0.0.1", port=str(proxy.listen_port), sslmode="disable")
    return make_conninfo(**info), proxy


def job_row(url: str, job_id: int) -> dict[str, Any]:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        found = conn.execute("SELECT * FROM backfill_jobs WHERE id = %s", [job_id]).fetchone()
    assert found is not None
    return found


def test_catch_up_rows_whose_commit_answer_is_lost_count_once(database_url, tmp_path):
    url, proxy = proxied(database_url, b"batches_committed = batches_committed + 1")
    crawler = crawler_for(url, tmp_path / ".civicband")

    async def scenario() -> int:
        job = await held_job(crawler)
        rows = [row(f"00000000000{i}", i) for i in range(1, 4)]
        proxy.armed = True
        try:
            await crawler.get_extension(Registry).writer.rows(job, rows, clean_page(rows))
        finally:
            await crawler.get_extension(Store).close()
        return job.job_id

    job_id = asyncio.run(scenario())
    assert proxy.dropped == 1
    assert crawler.stats.get_value("civicband/db/retries") >= 1
    found = job_row(database_url, job_id)
    assert (found["pages_fetched"], found["pages_created"], found["pages_updated"]) == (3, 3, 0)
    assert crawler.stats.get_value("civicband/pages/duplicates_dropped") == 1


def test_a_sweep_whose_commit_answer_is_lost_deletes_nothing_more(database_url, tmp_path):
    url, proxy = proxied(database_url, b"AND substr(p.id, 1, 2) = ANY(")
    crawler = crawler_for(url, tmp_path / ".civicband")

    async def scenario() -> tuple[int, Any]:
        job = await held_job(crawler)
        rows = [row(f"00000000000{i}", i) for i in range(1, 6)]
        registry = crawler.get_extension(Registry)
        await registry.writer.page(job, page(job, None, None, rows), clean_page(rows))
        proxy.armed = True
        try:
            # The source holds the 5 ids the pass saw (their count and id sums).
            verdict = await registry.verify._sweep(job, {"00": digest.Bucket(n=5, hi=0, lo=15)})
        finally:
            await crawler.get_extension(Store).close()
        return job.job_id, verdict

    job_id, verdict = asyncio.run(scenario())
    assert proxy.dropped == 1
    assert verdict is None  # nothing refused: the source holds the 5 pages the pass saw
    with psycopg.connect(database_url) as conn:
        (left,) = conn.execute("SELECT count(*) FROM meeting_pages").fetchone()
    assert (left, job_row(database_url, job_id)["pages_removed"]) == (5, 0)
