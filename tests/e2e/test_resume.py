"""Resume, pause and crashes: every scenario ends with the mirror equal to the source."""

from __future__ import annotations

import random
import signal
from collections import Counter

import pytest

from civicband.embedded import EmbeddedPostgres
from tests.e2e.crawl import (
    assert_mirror_equals_source,
    committed,
    crawl,
    is_count,
    is_digest,
    jobs,
    page_requests,
    register,
    start_crawl,
    wait_for,
)


def slow(source, site, seconds: float = 0.25) -> None:
    """Make every page of a site take a while, so a signal lands mid-crawl."""
    source.faults.add(
        match=f"/{site.subdomain}/meetings/(agendas|minutes)",
        action="hang",
        seconds=seconds,
        times=-1,
    )


def known_site(database_url, source, **sizes):
    site = source.create_site(**sizes)
    register(database_url, site)
    return site


def test_resume_continues_a_failed_job_from_its_cursor(database_url, source):
    site = known_site(database_url, source, agendas=120, minutes=0)
    source.faults.add(match="_next=", action="status", status=503, times=-1)
    failed = crawl(
        database_url,
        source,
        f"subdomain={site.subdomain}",
        "document_type=agenda",
        "batch_size=50",
        settings={"RETRY_TIMES": 0},
    )
    assert failed.returncode == 1, failed
    (job,) = jobs(database_url, site.subdomain)
    assert (job["status"], job["pages_fetched"], job["retry_count"]) == ("failed", 50, 1), failed
    source.faults.clear()
    source.clear_requests()
    resumed = crawl(
        database_url,
        source,
        f"subdomain={site.subdomain}",
        "document_type=agenda",
        "batch_size=50",
        "resume=true",
    )
    assert resumed.returncode == 0, resumed
    (again,) = jobs(database_url, site.subdomain)
    assert again["id"] == job["id"] and again["status"] == "completed"
    assert (again["pages_fetched"], again["pages_created"], again["pages_updated"]) == (120, 120, 0)
    first_pages = [r for r in page_requests(source) if "_next=" not in r["query"]]
    assert first_pages == [], "resume started over instead of continuing"
    assert resumed.stats["civicband/jobs/resumed"] == 1
    assert_mirror_equals_source(database_url, site, ("agenda",))


def test_without_resume_a_new_job_starts_over(database_url, source):
    site = known_site(database_url, source, agendas=30, minutes=0)
    source.faults.add(match="_next=", action="status", status=503, times=-1)
    crawl(
        database_url,
        source,
        f"subdomain={site.subdomain}",
        "document_type=agenda",
        "batch_size=10",
        settings={"RETRY_TIMES": 0},
    )
    source.faults.clear()
    result = crawl(database_url, source, f"subdomain={site.subdomain}", "document_type=agenda")
    assert result.returncode == 0, result
    first, second = jobs(database_url, site.subdomain)
    assert first["status"] == "failed" and second["status"] == "completed"
    assert (second["mode"], second["pages_fetched"]) == ("full", 30)


def test_resuming_a_job_with_only_its_verification_left_fetches_no_page(
    database_url, source, tmp_path
):
    site = known_site(database_url, source, agendas=60, minutes=0)
    # Every page is stored, then the digest fails and its retry waits out a long backoff:
    # Ctrl-C there pauses a job whose pass is exhausted and whose verdict never came.
    source.faults.add(match="group\\+by\\+tag,bucket", action="status", status=503, times=-1)
    first = start_crawl(
        database_url,
        source,
        f"subdomain={site.subdomain}",
        "document_type=agenda",
        log=tmp_path / "first.log",
        settings={"CIVICBAND_BACKOFF_BASE": 60, "CIVICBAND_BACKOFF_MAX": 60},
    )
    wait_for(
        lambda: any(is_digest(r) and r["status"] == 503 for r in source.requests()),
        what="the digest to fail",
    )
    first.process.send_signal(signal.SIGINT)
    assert first.wait(timeout=60) == 3, first
    (job,) = jobs(database_url, site.subdomain)
    assert (job["status"], job["verify_status"], job["pages_fetched"]) == ("paused", None, 60)
    source.faults.clear()
    source.clear_requests()
    resumed = crawl(
        database_url, source, f"subdomain={site.subdomain}", "document_type=agenda", "resume=true"
    )
    assert resumed.returncode == 0, resumed
    (job,) = jobs(database_url, site.subdomain)
    assert (job["status"], job["verify_status"], job["pages_fetched"]) == (
        "completed",
        "passed",
        60,
    )
    assert page_requests(source) == []
    # One digest answered; on 0.65 the first try of /-/query.json is refused (the dialect probe).
    asked = source.requests()
    assert all(is_digest(r) or is_count(r) for r in asked), asked
    assert sum(is_digest(r) and r["status"] == 200 for r in asked) == 1, asked
    assert_mirror_equals_source(database_url, site, ("agenda",))


@pytest.mark.datasette("ds10")
def test_kill_9_at_random_moments_then_resume_loses_and_doubles_nothing(
    database_url, source, tmp_path
):
    site = known_site(database_url, source, agendas=900, minutes=0)
    slow(source, site, 0.05)
    rng = random.Random(7)
    args = (f"subdomain={site.subdomain}", "document_type=agenda", "batch_size=30", "resume=true")
    for attempt in range(3):
        process = start_crawl(database_url, source, *args, log=tmp_path / f"kill{attempt}.log")
        target = committed(database_url, site.subdomain) + rng.randint(1, 5)
        wait_for(
            lambda p=process, t=target: (
                committed(database_url, site.subdomain) >= t or p.process.poll() is not None
            ),
            what="pages to commit",
        )
        process.process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    (job,) = jobs(database_url, site.subdomain)
    assert job["status"] == "running"  # abandoned: its holder is dead
    source.faults.clear()
    result = crawl(database_url, source, *args)
    assert result.returncode == 0, result
    (job,) = jobs(database_url, site.subdomain)
    assert job["status"] == "completed"
    assert (job["pages_fetched"], job["pages_created"], job["pages_updated"]) == (900, 900, 0)
    assert result.stats["civicband/jobs/resumed"] == 1
    assert_mirror_equals_source(database_url, site, ("agenda",))


@pytest.mark.datasette("ds10")
def test_sigint_pauses_and_the_same_jobdir_resumes_fetching_no_page_twice(
    database_url, source, tmp_path
):
    site = known_site(database_url, source, agendas=400, minutes=300)
    slow(source, site)
    jobdir = tmp_path / "crawls" / "run-1"
    args = (f"subdomain={site.subdomain}", "batch_size=20")
    settings = {"JOBDIR": str(jobdir)}
    process = start_crawl(database_url, source, *args, settings=settings, log=tmp_path / "run1.log")
    wait_for(lambda: committed(database_url, site.subdomain) >= 3, what="pages to commit")
    process.process.send_signal(signal.SIGINT)
    assert process.wait(timeout=150) == 3, process
    statuses = Counter(job["status"] for job in jobs(database_url, site.subdomain))
    assert statuses == Counter({"paused": 2}), statuses
    assert (process.stats["civicband/jobs/paused"], process.stats["civicband/exit_code"]) == (2, 3)
    assert "Summary" in process.output() and "(full): paused" in process.output()
    source.faults.clear()
    result = crawl(database_url, source, *args, settings=settings)
    assert result.returncode == 0, result
    assert [job["status"] for job in jobs(database_url, site.subdomain)] == ["completed"] * 2
    for job in jobs(database_url, site.subdomain):
        total = 400 if job["document_type"] == "agenda" else 300
        assert (job["pages_fetched"], job["pages_created"]) == (total, total)
    pages = Counter((r["path"], r["query"]) for r in page_requests(source) if r["status"] == 200)
    assert pages and max(pages.values()) == 1, [p for p, n in pages.items() if n > 1]
    assert result.stats["civicband/jobs/resumed"] == 2
    assert_mirror_equals_source(database_url, site)


@pytest.mark.datasette("ds10")
def test_sigterm_pauses_like_ctrl_c(database_url, source, tmp_path):
    site = known_site(database_url, source, agendas=300, minutes=0)
    slow(source, site)
    args = (f"subdomain={site.subdomain}", "document_type=agenda", "batch_size=20")
    process = start_crawl(database_url, source, *args, log=tmp_path / "term.log")
    wait_for(lambda: committed(database_url, site.subdomain) >= 2, what="pages to commit")
    process.process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=150) == 3, process
    assert [job["status"] for job in jobs(database_url, site.subdomain)] == ["paused"]
    assert process.stats["civicband/jobs/paused"] == 1


@pytest.mark.datasette("ds10")
def test_a_second_process_with_the_same_arguments_shares_the_run(database_url, source, tmp_path):
    site = known_site(database_url, source, agendas=300, minutes=0)
    # 30 pages of 0.5 s: the first crawl outlives the second's start-up even on a loaded
    # machine; once the second has seen it, the pages go fast again.
    slow(source, site, 0.5)
    args = (f"subdomain={site.subdomain}", "document_type=agenda", "batch_size=10")
    first = start_crawl(database_url, source, *args, log=tmp_path / "first.log")
    wait_for(lambda: committed(database_url, site.subdomain) >= 1, what="the first crawl to run")
    second = crawl(database_url, source, *args)
    assert first.process.poll() is None, "the first crawl ended before the second had started"
    source.faults.clear()
    assert second.returncode == 0, second
    assert "joined the live run" in second.stderr
    assert "is running in another process: skipped" in second.stderr, second
    assert second.stats["civicband/jobs/skipped"] == 1
    assert first.wait(timeout=120) == 0, first
    (job,) = jobs(database_url, site.subdomain)
    assert job["status"] == "completed" and job["pages_created"] == 300
    assert_mirror_equals_source(database_url, site, ("agenda",))


@pytest.mark.datasette("ds10")
def test_postgres_restart_mid_crawl_loses_no_page(source, tmp_path):
    server = EmbeddedPostgres(tmp_path / "pg")
    url = server.start()
    try:
        site = known_site(url, source, agendas=300, minutes=0)
        slow(source, site, 0.1)
        args = (f"subdomain={site.subdomain}", "document_type=agenda", "batch_size=20")
        # A 2 s wait for a connection, not the default 10 s, before the crawl says so and retries.
        settings = {"CIVICBAND_BACKOFF_BASE": 0.5, "CIVICBAND_DB_TIMEOUT": 2}
        process = start_crawl(url, source, *args, log=tmp_path / "crawl.log", settings=settings)
        wait_for(lambda: committed(url, site.subdomain) >= 2, what="pages to commit")
        server.stop()
        wait_for(lambda: "Database trouble" in process.output(), what="the crawl to notice")
        server.start()
        assert process.wait(timeout=120) == 0, process
        (job,) = jobs(url, site.subdomain)
        assert (job["status"], job["pages_fetched"], job["pages_created"]) == (
            "completed",
            300,
            300,
        )
        assert process.stats["civicband/db/retries"] >= 1
        assert_mirror_equals_source(url, site, ("agenda",))
    finally:
        server.destroy()


def test_database_down_for_good_exits_1_and_leaves_jobs_resumable(source_ds10, tmp_path):
    source = source_ds10
    server = EmbeddedPostgres(tmp_path / "pg")
    url = server.start()
    try:
        site = known_site(url, source, agendas=200, minutes=0)
        slow(source, site, 0.1)
        args = (f"subdomain={site.subdomain}", "document_type=agenda", "batch_size=20")
        process = start_crawl(
            url,
            source,
            *args,
            log=tmp_path / "crawl.log",
            settings={
                "CIVICBAND_BACKOFF_BASE": 0.1,
                "CIVICBAND_DB_RETRIES": 2,
                "CIVICBAND_DB_TIMEOUT": 2,
            },
        )
        wait_for(lambda: committed(url, site.subdomain) >= 2, what="pages to commit")
        server.stop()
        assert process.wait(timeout=120) == 1, process
        assert "Traceback" not in process.output()
        assert process.stats["civicband/exit_code"] == 1
        assert process.stats["civicband/db/errors"] >= 1
        assert "left running (resumable)" in process.output()
        server.start()
        (job,) = jobs(url, site.subdomain)
        assert job["status"] == "running" and job["last_cursor"] is not None
        source.faults.clear()
        result = crawl(url, source, *args, "resume=true")
        assert result.returncode == 0, result
        (job,) = jobs(url, site.subdomain)
        assert (job["status"], job["pages_fetched"], job["pages_created"]) == (
            "completed",
            200,
            200,
        )
        assert_mirror_equals_source(url, site, ("agenda",))
    finally:
        server.destroy()
