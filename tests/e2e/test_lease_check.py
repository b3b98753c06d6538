"""A lease connection cut while its crawl waits on a slow site: noticed within seconds, not at
the next write. Taken back, the job goes on and nobody else takes it for abandoned; taken by
another session meanwhile, the job stops at once and records nothing more.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest

from civicband.leases import LEASE_CLASS
from tests.e2e.crawl import (
    Background,
    assert_mirror_equals_source,
    committed,
    crawl,
    fetch,
    jobs,
    page_requests,
    register,
    start_crawl,
    wait_for,
)

ARGS = ("document_type=agenda", "batch_size=20")
# A check every half second: the cut is seen well within the waits below.
SETTINGS = {"CIVICBAND_LEASE_CHECK_INTERVAL": 0.5}
RENEWED = "Reconnected the lease connection; leases now held by others: none"
LOST = "its lease was taken by another process; stopped here"


def held(source: Any) -> list[dict[str, Any]]:
    """Page requests the look-alike is holding (fault `hold`, not yet answered)."""
    return [r for r in page_requests(source) if r["fault"] == "hold" and r["status"] is None]


def held_at_second_page(database_url: str, source: Any, tmp_path: Any) -> tuple[Any, Background]:
    """A crawl whose first page is stored and whose second the slow site keeps waiting."""
    site = source.create_site(agendas=60, minutes=0)
    register(database_url, site)
    source.faults.add(match="_next=", action="hold", times=-1)
    first = start_crawl(
        database_url,
        source,
        f"subdomain={site.subdomain}",
        *ARGS,
        settings=SETTINGS,
        log=tmp_path / "first.log",
    )
    wait_for(lambda: len(held(source)) == 1, what="the second page to be held")
    wait_for(lambda: committed(database_url, site.subdomain) == 1, what="the first page stored")
    return site, first


def cut_lease_connection(database_url: str, crawl_pid: int) -> None:
    """Terminate the crawl's lease connection and wait until it is gone, and its locks with it."""
    killed = fetch(
        database_url,
        "SELECT pg_terminate_backend(pid, 10000) AS gone FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name LIKE 'civicband lease %%'"
        " AND application_name LIKE %s",
        [f"%:{crawl_pid}"],
    )
    assert [row["gone"] for row in killed] == [True], killed


def take_lease_as_it_is_cut(
    taker: psycopg.Connection, database_url: str, pid: int, job: int
) -> None:
    """Queue for the job's lease, then cut its holder's connection: PostgreSQL hands the lock to
    the queued session as the holder's backend exits, before the holder can reconnect."""
    waiting = "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
    waiting += " AND classid::bigint = %s AND objid::bigint = %s"
    with ThreadPoolExecutor(1) as pool:
        taken = pool.submit(
            taker.execute, "SELECT pg_advisory_lock(%s, %s::integer)", [LEASE_CLASS, job]
        )
        wait_for(
            lambda: fetch(database_url, waiting, [LEASE_CLASS, job]), what="the taker to queue"
        )
        cut_lease_connection(database_url, pid)
        taken.result(timeout=30)


@pytest.mark.datasette("ds10")
def test_a_lease_connection_cut_while_idle_is_taken_back_and_no_other_run_takes_the_job(
    database_url, source, tmp_path
):
    site, first = held_at_second_page(database_url, source, tmp_path)
    try:
        (before,) = jobs(database_url, site.subdomain)
        cut_lease_connection(database_url, first.process.pid)
        wait_for(lambda: RENEWED in first.output(), timeout=30, what="the lease taken back")
        second = crawl(database_url, source, f"subdomain={site.subdomain}", *ARGS, "resume=true")
        assert second.returncode == 0, second
        assert "is running in another process: skipped" in second.stderr, second
        assert "civicband/jobs/taken_over" not in second.stats
        assert "civicband/jobs/failed" not in second.stats
        (during,) = jobs(database_url, site.subdomain)
        assert (during["status"], during["lease_token"]) == ("running", before["lease_token"])
        assert first.process.poll() is None and len(held(source)) == 1
        source.faults.clear()
        assert first.wait(timeout=120) == 0, first
    finally:
        source.faults.clear()
        if first.process.poll() is None:
            first.process.kill()
    assert first.stats["civicband/leases/renewed"] == 1
    assert "civicband/jobs/lost" not in first.stats
    (done,) = jobs(database_url, site.subdomain)
    assert (done["id"], done["status"], done["verify_status"]) == (
        before["id"],
        "completed",
        "passed",
    )
    assert (done["pages_fetched"], done["pages_created"], done["pages_updated"]) == (60, 60, 0)
    assert_mirror_equals_source(database_url, site, ("agenda",))


@pytest.mark.datasette("ds10")
def test_a_lease_taken_while_its_connection_was_cut_stops_the_job_before_its_next_write(
    database_url, source, tmp_path
):
    site, first = held_at_second_page(database_url, source, tmp_path)
    try:
        (before,) = jobs(database_url, site.subdomain)
        with psycopg.connect(database_url, autocommit=True) as taker:
            take_lease_as_it_is_cut(taker, database_url, first.process.pid, before["id"])
            wait_for(lambda: LOST in first.output(), timeout=30, what="the job to stop")
            (stopped,) = jobs(database_url, site.subdomain)
            # Noticed by the check, not by a write: the second page is still on its way.
            assert len(held(source)) == 1
            source.faults.clear()
            assert first.wait(timeout=120) == 0, first
            (after,) = jobs(database_url, site.subdomain)
    finally:
        source.faults.clear()
        if first.process.poll() is None:
            first.process.kill()
    assert "Reconnected the lease connection; leases now held by others: [" in first.output()
    assert (first.stats["civicband/jobs/lost"], first.stats["civicband/leases/renewed"]) == (1, 1)
    assert "civicband/jobs/failed" not in first.stats
    assert "civicband/jobs/paused" not in first.stats
    assert len([r for r in page_requests(source) if r["status"] == 200]) == 2
    assert after == stopped == before, "the stopped holder recorded something more"
    assert (after["pages_fetched"], after["batches_committed"]) == (20, 1)
