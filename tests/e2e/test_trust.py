"""The trust core as an operator meets it: shared runs, stale lease holders, signals, bad sources.

Each scenario here once lost, deleted or double-counted something, or never ended. Every one
now ends with the mirror equal to the source, counters exact, no job failed that was not at
fault, and an exit status that says what happened.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections import Counter

import psycopg
import pytest
from psycopg import sql

from civicband.commands.crawl import SIGNAL_ECHO
from civicband.leases import LEASE_CLASS
from tests.e2e.crawl import (
    assert_jobs_complete_and_exact,
    assert_mirror_equals_source,
    committed,
    crawl,
    execute,
    fetch,
    is_digest,
    jobs,
    page_requests,
    register,
    sql_requests,
    start_crawl,
    wait_for,
)
from tests.integration.test_lost_commit import proxied
from tests.pg import with_dbname

PAGES = "/{}/meetings/(agendas|minutes)\\.json"


def slow(source, site, seconds: float = 0.25) -> None:
    """Make every page of a site take a while, so other things happen meanwhile."""
    source.faults.add(match=PAGES.format(site.subdomain), action="hang", seconds=seconds, times=-1)


def held(source) -> list[dict]:
    """Page requests the look-alike is holding (fault `hold`, not yet answered)."""
    return [r for r in page_requests(source) if r["fault"] == "hold" and r["status"] is None]


def known_site(database_url, source, **sizes):
    site = source.create_site(**sizes)
    register(database_url, site)
    return site


@pytest.mark.datasette("ds10")
def test_a_jobdir_rerun_beside_a_live_resume_fails_no_job(database_url, source, tmp_path):
    site = known_site(database_url, source, agendas=400, minutes=300)
    slow(source, site)
    jobdir = tmp_path / "crawls" / "run-1"
    args = (f"subdomain={site.subdomain}", "batch_size=20")
    paused = start_crawl(
        database_url, source, *args, settings={"JOBDIR": str(jobdir)}, log=tmp_path / "a.log"
    )
    wait_for(lambda: committed(database_url, site.subdomain) >= 3, what="pages to commit")
    paused.process.send_signal(signal.SIGINT)
    assert paused.wait(timeout=150) == 3, paused
    # Another operator resumes those jobs and is held at its first pages (no clock decides how
    # long it works); meanwhile the same JOBDIR command runs again.
    source.faults.clear()
    source.faults.add(match=PAGES.format(site.subdomain), action="hold", times=-1)
    source.clear_requests()
    other = start_crawl(database_url, source, *args, "resume=true", log=tmp_path / "b.log")
    wait_for(lambda: len(held(source)) == 2, what="the resume to ask for both tables' pages")
    rerun = crawl(database_url, source, *args, settings={"JOBDIR": str(jobdir)})
    assert rerun.returncode == 0, rerun
    assert rerun.stats.get("civicband/jobs/failed", 0) == 0
    assert rerun.stats["civicband/requests/dropped"] >= 1  # restored from JOBDIR: not its job
    assert len(held(source)) == 2, "the rerun fetched pages of jobs it does not hold"
    assert other.process.poll() is None
    source.faults.clear()
    assert other.wait(timeout=150) == 0, other
    assert [j["status"] for j in jobs(database_url, site.subdomain)] == ["completed"] * 2
    assert all(j["verify_status"] == "passed" for j in jobs(database_url, site.subdomain))
    assert_mirror_equals_source(database_url, site)


def test_a_next_that_does_not_advance_fails_the_job_instead_of_looping(database_url, source):
    site = known_site(database_url, source, agendas=100, minutes=0)
    source.faults.add(match="_next=", action="rewrite_next", mode="repeat", times=-1)
    result = crawl(
        database_url, source, f"subdomain={site.subdomain}", "document_type=agenda", "batch_size=20"
    )
    assert result.returncode == 1, result
    (job,) = jobs(database_url, site.subdomain)
    assert job["status"] == "failed"
    assert "the source misbehaves: `next` does not advance" in job["last_error"]
    assert len(page_requests(source)) == 2  # page 1, then page 2 once: no loop


def test_empty_pages_with_a_fresh_next_fail_the_job_instead_of_looping(database_url, source):
    site = known_site(database_url, source, agendas=100, minutes=0)
    # After page 1, a token past the last id: pages without rows, each with a new `next`.
    source.faults.add(
        match="agendas\\.json(?!.*_next=)",
        action="rewrite_next",
        value="ffffffffffff,ffffffffffff",
        times=1,
    )
    source.faults.add(match="_next=", action="rewrite_next", mode="advance", times=-1)
    result = crawl(
        database_url, source, f"subdomain={site.subdomain}", "document_type=agenda", "batch_size=20"
    )
    assert result.returncode == 1, result
    (job,) = jobs(database_url, site.subdomain)
    assert job["status"] == "failed"
    assert "the source misbehaves: a page without rows says more follow" in job["last_error"]
    assert len(page_requests(source)) == 2  # page 1, then one empty page: no loop


def test_ids_that_go_back_fail_the_job(database_url, source):
    site = known_site(database_url, source, agendas=100, minutes=0)
    first = sorted(site.ids("agendas"))[19]
    third = sorted(site.ids("agendas"))[39]
    # Page 3 answers as if page 2 came next again.
    source.faults.add(
        match=f"_next={third}", action="rewrite_next", value=f"{first},{first}", times=1
    )
    result = crawl(
        database_url, source, f"subdomain={site.subdomain}", "document_type=agenda", "batch_size=20"
    )
    assert result.returncode == 1, result
    (job,) = jobs(database_url, site.subdomain)
    assert "the source misbehaves: ids do not increase" in job["last_error"]
    assert len(page_requests(source)) == 4


def uv_run() -> list[str]:
    """How the README runs the crawl: through `uv run` (which forwards signals to its child)."""
    uv = os.environ.get("UV") or shutil.which("uv")
    assert uv, "the tests run under `uv run`, which says where uv is"
    return [uv, "run", "--frozen", "--no-sync", "python"]


@pytest.mark.datasette("ds10")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_process_group_through_uv_run_pauses_cleanly(
    database_url, source, tmp_path, signum
):
    site = known_site(database_url, source, agendas=300, minutes=200)
    slow(source, site)
    crawler = start_crawl(
        database_url,
        source,
        f"subdomain={site.subdomain}",
        "batch_size=20",
        log=tmp_path / "uv.log",
        python=uv_run(),
        start_new_session=True,  # no terminal, its own process group: as a supervisor runs it
    )
    wait_for(lambda: committed(database_url, site.subdomain) >= 2, what="pages to commit")
    os.killpg(crawler.process.pid, signum)  # uv and the crawl both get it; uv forwards it again
    assert crawler.wait(timeout=150) == 3, crawler
    assert "forcing unclean shutdown" not in crawler.output()
    assert Counter(j["status"] for j in jobs(database_url, site.subdomain)) == {"paused": 2}
    assert crawler.stats["civicband/jobs/paused"] == 2


@pytest.mark.datasette("ds10")
def test_a_second_ctrl_c_after_a_moment_stops_at_once(database_url, source, tmp_path):
    site = known_site(database_url, source, agendas=200, minutes=0)
    slow(source, site, 60)  # a graceful stop would wait for this download
    crawler = start_crawl(
        database_url,
        source,
        f"subdomain={site.subdomain}",
        "document_type=agenda",
        log=tmp_path / "twice.log",
        start_new_session=True,
    )
    wait_for(lambda: page_requests(source), what="the first page to be asked for")
    os.killpg(crawler.process.pid, signal.SIGINT)
    wait_for(lambda: "shutting down gracefully" in crawler.output(), what="the graceful stop")
    time.sleep(SIGNAL_ECHO + 0.2)  # the window under test: past it, a second signal is real
    started = time.monotonic()
    os.killpg(crawler.process.pid, signal.SIGINT)
    assert crawler.wait(timeout=30) == 3, crawler
    assert time.monotonic() - started < 20
    assert "forcing unclean shutdown" in crawler.output()
    # Not paused: the job counts as abandoned, which resumes just as well.
    assert [j["status"] for j in jobs(database_url, site.subdomain)] == ["running"]


@pytest.mark.datasette("ds10")
def test_a_stale_lease_holder_changes_nothing_after_a_takeover(database_url, source, tmp_path):
    site = known_site(database_url, source, agendas=400, minutes=0)
    slow(source, site, 0.3)
    args = (f"subdomain={site.subdomain}", "document_type=agenda", "batch_size=20")
    # Its lease connection is checked only once an hour: the cut below stays unnoticed until
    # its next write (test_lease_check: a holder that notices takes its lease back at once).
    stale = start_crawl(
        database_url,
        source,
        *args,
        settings={"CIVICBAND_LEASE_CHECK_INTERVAL": 3600},
        log=tmp_path / "stale.log",
    )
    wait_for(lambda: committed(database_url, site.subdomain) >= 2, what="pages to commit")
    (job,) = jobs(database_url, site.subdomain)
    # Its lease connection is cut (a network blip): PostgreSQL frees the lease at once, and
    # another process takes the job over while the old holder goes on fetching.
    killed = fetch(
        database_url,
        "SELECT pg_terminate_backend(pid) AS ok FROM pg_locks WHERE locktype = 'advisory'"
        " AND classid::bigint = %s AND objid::bigint = %s AND granted",
        [LEASE_CLASS, job["id"]],
    )
    assert killed and killed[0]["ok"]
    taker = start_crawl(database_url, source, *args, "resume=true", log=tmp_path / "taker.log")
    wait_for(lambda: "its lease was taken by another process" in stale.output(), what="fencing")
    assert stale.wait(timeout=150) == 0, stale
    source.faults.clear()
    assert taker.wait(timeout=150) == 0, taker
    assert stale.stats["civicband/jobs/lost"] == 1
    assert "civicband/jobs/paused" not in stale.stats and "civicband/jobs/failed" not in stale.stats
    assert taker.stats["civicband/jobs/taken_over"] == 1
    (done,) = jobs(database_url, site.subdomain)
    assert (done["status"], done["verify_status"]) == ("completed", "passed")
    assert (done["pages_fetched"], done["pages_created"], done["pages_updated"]) == (400, 400, 0)
    assert_mirror_equals_source(database_url, site, ("agenda",))


@pytest.mark.datasette("ds10")
def test_three_processes_share_six_sites(database_url, source, tmp_path):
    sites = [source.create_site(agendas=100, minutes=60) for _ in range(6)]
    register(database_url, *sites)
    for site in sites:
        slow(source, site, 0.05)
    args = (f"subdomain={','.join(s.subdomain for s in sites)}", "batch_size=20")
    settings = {"CIVICBAND_MAX_ACTIVE_JOBS": 2}
    crawlers = [
        start_crawl(database_url, source, *args, settings=settings, log=tmp_path / f"p{i}.log")
        for i in range(3)
    ]
    for crawler in crawlers:
        assert crawler.wait(timeout=180) == 0, crawler
    for site in sites:
        assert_mirror_equals_source(database_url, site)
    done = jobs(database_url)
    assert len(done) == 12 and {j["status"] for j in done} == {"completed"}
    assert len({(j["subdomain"], j["document_type"]) for j in done}) == 12  # none done twice
    assert len({j["run_id"] for j in done}) == 1  # one run, shared
    pages = Counter((r["path"], r["query"]) for r in page_requests(source))
    assert max(pages.values()) == 1, [p for p, n in pages.items() if n > 1]
    assert len([r for r in sql_requests(source) if is_digest(r)]) == 12
    shares = [c.stats.get("civicband/rows/fetched", 0) for c in crawlers]
    assert sum(shares) == 6 * 160 and all(shares), shares  # each process did a share
    assert max(c.stats.get("civicband/jobs/started", 0) for c in crawlers) <= 8


@pytest.mark.datasette("ds10")  # the subject is PostgreSQL's answer, not the Datasette line
@pytest.mark.parametrize(
    "then_cut", [None, b"pg_locks"], ids=["retried once", "its retry cut before leasing"]
)
def test_a_claim_whose_commit_answer_is_lost_still_runs_its_jobs(database_url, source, then_cut):
    site = source.create_site(agendas=30, minutes=20)
    register(database_url, site)
    # The claim commits, its answer never comes: the retry must find those jobs again, even
    # when that retry is cut too before it takes a lease and a third attempt finds them.
    url, proxy = proxied(database_url, b"lease_token = nextval")
    proxy.then_cut = then_cut
    proxy.armed = True
    result = crawl(url, source, f"subdomain={site.subdomain}")
    assert (proxy.dropped, proxy.cut) == (1, int(then_cut is not None))
    assert result.returncode == 0, result
    assert result.stats["civicband/db/retries"] >= 1
    assert result.stats.get("civicband/jobs/taken_over", 0) == 0  # its own claim, retried
    assert_jobs_complete_and_exact(database_url, site)


@pytest.mark.datasette("ds10")  # the subject is PostgreSQL refusing; probes: test_backfill
def test_a_database_error_adding_a_named_site_exits_1(database_url, source):
    site = source.create_site(agendas=5, minutes=0)
    register(database_url)
    execute(
        database_url,
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN RAISE EXCEPTION 'no new sites today'; END $$;"
        " CREATE TRIGGER refuse BEFORE INSERT ON municipalities"
        " FOR EACH ROW EXECUTE FUNCTION refuse()",
    )
    result = crawl(database_url, source, f"subdomain={site.subdomain}")
    assert result.returncode == 1, result
    assert "could not add it to municipalities" in result.stderr
    assert "no new sites today" in result.stderr
    assert result.stats["civicband/db/errors"] == 1
    assert jobs(database_url) == []


@pytest.mark.datasette("ds10")
def test_a_catch_up_on_a_database_whose_collation_is_not_c(pg_base_url, source):
    dbname = "civicband_icu_" + os.urandom(4).hex()
    with psycopg.connect(pg_base_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "CREATE DATABASE {} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US'"
                " LOCALE 'C.UTF-8'"
            ).format(sql.Identifier(dbname))
        )
    url = with_dbname(pg_base_url, dbname)
    try:
        order = fetch(url, "SELECT x FROM unnest(ARRAY['a1', 'B2', '_3', 'a0']) x ORDER BY x")
        assert [r["x"] for r in order] != sorted(["a1", "B2", "_3", "a0"]), "collation is C"
        base = source.create_site(agendas=300, minutes=0).rows("agendas")
        mixed = [{**r, "id": r["id"][:11].upper() + "_"} for r in base[:20]]
        site = known_site(url, source, agendas=base[20:] + mixed, minutes=0)
        assert crawl(url, source, f"subdomain={site.subdomain}").returncode == 0
        site.delete_rows("agendas", [mixed[3]["id"], base[40]["id"]])
        result = crawl(url, source, f"subdomain={site.subdomain}", "document_type=agenda")
        assert result.returncode == 0, result
        assert jobs(url, site.subdomain)[-1]["verify_status"] == "passed"
        assert_mirror_equals_source(url, site, ("agenda",))
    finally:
        with psycopg.connect(pg_base_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(dbname)))
