"""Deployment: scrapyd-deploy to a real scrapyd on loopback, crawls scheduled through its API.

The README's commands, as an operator runs them: the project goes to scrapyd as the egg
scrapyd-deploy builds, scrapyd runs it in its own Python (civicband's runtime dependencies
and setuptools<81, no civicband), and schedule.json passes spider arguments as themselves
and settings as `setting=NAME=VALUE`. The service secret reaches the crawl the way the
README says, through scrapyd's environment; the database URL, which differs per test, as a
setting. One server and one deploy serve the whole module.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.artefacts import _copy_of_working_tree
from tests.e2e.crawl import (
    SECRET,
    assert_mirror_equals_source,
    committed,
    jobs,
    page_requests,
    read_stats,
    register,
    wait_for,
)
from tests.e2e.scrapyd_server import PROJECT, Scrapyd, runtime_requirements, scrapyd_env
from tests.lookalike import data

SPIDERS = ["civicband", "civicband-sites"]


@dataclass
class Deployed:
    server: Scrapyd
    answer: dict[str, Any]  # addversion.json's, as scrapyd-deploy printed it


@pytest.fixture(scope="module")
def scrapyd(tmp_path_factory: pytest.TempPathFactory):
    """A scrapyd 1.6 on a free loopback port with civicband deployed by scrapyd-deploy."""
    root = tmp_path_factory.mktemp("scrapyd")
    requirements = runtime_requirements(root / "requirements.txt")
    env = scrapyd_env(
        {
            "CIVICBAND_SERVICE_SECRET": SECRET,
            # Never used (every job names its database), but kept out of the checkout.
            "CIVICBAND_HOME": str(root / "home"),
        }
    )
    server = Scrapyd(root / "server", requirements, env)
    python = server.probe()
    assert python["scrapyd"].startswith("1.6."), python
    assert int(python["setuptools"].split(".")[0]) < 81, python
    assert not python["civicband"], f"civicband is installed where scrapyd runs it: {python}"
    server.start()
    try:
        tree = _copy_of_working_tree(tmp_path_factory)
        answer = server.deploy(tree, root / "config", root / "build")
        yield Deployed(server, answer)
    finally:
        server.stop()


def crawl_settings(database_url: str, source: Any, stats: Path) -> dict[str, str]:
    """The `setting=` pairs of a job against the look-alike."""
    return {
        "CIVICBAND_DATABASE_URL": database_url,
        "CIVICBAND_SITE_URL": source.site_url,
        "CIVICBAND_INDEX_URL": source.index_url,
        "CIVICBAND_STATS_FILE": str(stats),
    }


def finished(server: Scrapyd, job: str, *, exit_status: int) -> None:
    """Wait for the job to finish and check the exit status scrapyd saw."""
    server.wait_finished(job, timeout=120)
    status = server.exit_status(job)
    assert status == exit_status, f"exit {status}\n--- job log ---\n{server.job_log(job)[-6000:]}"


def assert_no_secret_logged(server: Scrapyd, *job_ids: str) -> None:
    for job in job_ids:
        assert server.job_log(job), f"job {job} left no log"
        assert SECRET not in server.job_log(job), f"job {job} logged the service secret"
    assert SECRET not in server.log(), "scrapyd logged the service secret"


def test_scrapyd_deploy_adds_the_project_with_both_spiders(scrapyd):
    answer, server = scrapyd.answer, scrapyd.server
    assert (answer["status"], answer["project"], answer["spiders"]) == ("ok", PROJECT, 2), answer
    assert server.ok("listprojects.json")["projects"] == [PROJECT]
    assert server.ok("listversions.json", project=PROJECT)["versions"] == [answer["version"]]
    assert sorted(server.ok("listspiders.json", project=PROJECT)["spiders"]) == SPIDERS


@pytest.mark.datasette("ds10")
def test_a_scheduled_crawl_mirrors_the_site_and_the_same_schedule_catches_up(
    scrapyd, database_url, source, tmp_path
):
    server = scrapyd.server
    site = source.create_site(agendas=120, minutes=30)
    stats = tmp_path / "stats.json"
    arguments = {"subdomain": site.subdomain, "document_type": "agenda", "batch_size": 50}
    settings = crawl_settings(database_url, source, stats)
    # A fresh database: the crawl applies the schema from the egg and probes the new site.
    first = server.schedule("civicband", arguments, settings)
    finished(server, first, exit_status=0)
    assert read_stats(stats)["civicband/exit_code"] == 0
    assert read_stats(stats)["civicband/sites/added"] == 1
    assert read_stats(stats)["civicband/rows/created"] == 120
    assert assert_mirror_equals_source(database_url, site, ("agenda",)) == 120
    (job,) = jobs(database_url, site.subdomain)
    assert (job["document_type"], job["mode"], job["status"], job["verify_status"]) == (
        "agenda",
        "full",
        "completed",
        "passed",
    )
    assert (job["pages_fetched"], job["pages_created"]) == (120, 120)
    # batch_size=50 reached the spider: three pages.
    assert [r["status"] for r in page_requests(source, site.subdomain)] == [200] * 3
    # The secret came from scrapyd's environment: sent with every request, never logged.
    sent = source.requests()
    assert sent and all(r["headers"].get("x-service-secret") == SECRET for r in sent)

    # The daily catch-up is the same schedule.json again: only what changed is fetched.
    site.add_rows("agendas", data.make_rows("agendas", 7, seed="scrapyd catch-up"))
    source.clear_requests()
    second = server.schedule("civicband", arguments, settings)
    finished(server, second, exit_status=0)
    assert read_stats(stats)["civicband/exit_code"] == 0
    assert assert_mirror_equals_source(database_url, site, ("agenda",)) == 127
    caught_up = jobs(database_url, site.subdomain)[1]
    assert (caught_up["mode"], caught_up["status"], caught_up["verify_status"]) == (
        "catchup",
        "completed",
        "passed",
    )
    assert caught_up["pages_created"] == 7
    assert page_requests(source) == [], "a catch-up pages through nothing"
    assert_no_secret_logged(server, first, second)


@pytest.mark.datasette("ds10")
def test_cancel_pauses_and_the_same_schedule_with_jobdir_resumes(
    scrapyd, database_url, source, tmp_path
):
    server = scrapyd.server
    site = source.create_site(agendas=400, minutes=300)
    register(database_url, site)
    # Every page takes a while, so the cancel lands mid-crawl.
    source.faults.add(
        match=f"/{site.subdomain}/meetings/(agendas|minutes)\\.json",
        action="hang",
        seconds=0.25,
        times=-1,
    )
    stats = tmp_path / "stats.json"
    jobdir = tmp_path / "crawls" / "run-1"
    arguments = {"subdomain": site.subdomain, "batch_size": 20}
    settings = {**crawl_settings(database_url, source, stats), "JOBDIR": str(jobdir)}
    first = server.schedule("civicband", arguments, settings)
    wait_for(lambda: committed(database_url, site.subdomain) >= 3, what="pages to commit")
    # scrapyd 1.6's cancel.json sends SIGINT: the crawl's first Ctrl-C, a clean pause.
    assert server.cancel(first) == "running"
    finished(server, first, exit_status=3)
    assert "Received SIGINT, shutting down gracefully" in server.job_log(first)
    statuses = Counter(job["status"] for job in jobs(database_url, site.subdomain))
    assert statuses == Counter({"paused": 2}), statuses
    paused = read_stats(stats)
    assert (paused["civicband/jobs/paused"], paused["civicband/exit_code"]) == (2, 3)
    assert (jobdir / "requests.queue").is_dir(), "the crawl kept nothing in JOBDIR"

    source.faults.clear()
    second = server.schedule("civicband", arguments, settings)
    finished(server, second, exit_status=0)
    resumed = read_stats(stats)
    assert (resumed["civicband/jobs/resumed"], resumed["civicband/exit_code"]) == (2, 0)
    done = jobs(database_url, site.subdomain)
    assert [job["status"] for job in done] == ["completed"] * 2
    for job in done:
        total = 400 if job["document_type"] == "agenda" else 300
        assert (job["pages_fetched"], job["pages_created"]) == (total, total), job
        assert job["verify_status"] == "passed", job
    pages = Counter((r["path"], r["query"]) for r in page_requests(source) if r["status"] == 200)
    assert pages and max(pages.values()) == 1, [p for p, n in pages.items() if n > 1]
    assert_mirror_equals_source(database_url, site)
    assert_no_secret_logged(server, first, second)
