"""Spidermon (civicband[monitoring]): the real package judges real crawls when the spider closes.

Every crawl runs with the project's settings: `-s SPIDERMON_ENABLED=True` is the one setting
that turns the monitors on.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.e2e.crawl import assert_jobs_complete_and_exact, crawl, jobs, register
from tests.e2e.test_verify import drop_local, verify_only
from tests.lookalike import data

ADDON = "civicband.extensions.monitoring.Monitoring"
JOBS = "Jobs monitor/Should have no failed jobs"
SITES = "Jobs monitor/Should have no failed sites"
VERIFY = "Verification monitor/Should have no failed verification"
REJECTED = "Rejected rows monitor/Should reject at most CIVICBAND_MONITOR_MAX_REJECTED rows"
FINISH = "Finish Reason Monitor/Should have the expected finished reason(s)"
MONITORS = (JOBS, SITES, VERIFY, REJECTED, FINISH)
RECORD = "Record monitor results in stats"

pytestmark = pytest.mark.datasette("ds10")


def monitored(**settings):
    """Settings of a crawl with Spidermon on: nothing else."""
    return {"SPIDERMON_ENABLED": True, **settings}


def results(result) -> dict[str, str]:
    """Each monitor's and action's status, as Spidermon logged it ("OK", "FAIL", ...)."""
    found = {}
    for line in result.lines(r"\[Spidermon\] .+\.\.\. [A-Z]+$"):
        name, status = re.search(r"\[Spidermon\] (.+)\.\.\. ([A-Z]+)$", line).groups()
        assert name not in found, f"{name} reported twice: {result}"
        found[name] = status
    return found


def verdict(result) -> str:
    """The suite's summary, the line Spidermon logs after "N monitors in ...s"."""
    lines = [line.split("[Spidermon] ", 1)[1] for line in result.lines(r"\[Spidermon\] ")]
    footers = [i for i, line in enumerate(lines) if re.fullmatch(r"\d+ monitors? in .*s", line)]
    assert len(footers) == 1, result
    return lines[footers[0] + 1]


def expect(result, failing: tuple[str, ...]) -> None:
    """The suite ran once: exactly `failing` failed, every other monitor passed."""
    assert results(result) == {
        **{name: "FAIL" if name in failing else "OK" for name in MONITORS},
        RECORD: "OK",
    }, result
    assert verdict(result) == (f"FAILED (failures={len(failing)})" if failing else "OK"), result
    for name in failing:
        assert f"FAIL: {name}" in result.stderr, result
    stats = result.stats
    assert (stats["civicband/monitors/passed"], stats["civicband/monitors/failed"]) == (
        len(MONITORS) - len(failing),
        len(failing),
    ), stats
    extensions = re.search(r"Enabled extensions:\n(\[.*?\])", result.stderr, re.S)
    assert extensions and "spidermon.contrib.scrapy.extensions.Spidermon" in extensions[1], result


def test_a_clean_crawl_passes_every_monitor(database_url, source):
    site = source.create_site(agendas=140, minutes=35)
    register(database_url, site)
    result = crawl(database_url, source, f"subdomain={site.subdomain}", settings=monitored())
    assert result.returncode == 0, result
    assert_jobs_complete_and_exact(database_url, site)
    expect(result, failing=())


def test_a_failed_verification_fails_the_suite_naming_the_monitor(database_url, source):
    site = source.create_site(agendas=100, minutes=0)
    register(database_url, site)
    assert crawl(database_url, source, f"subdomain={site.subdomain}").returncode == 0
    drop_local(database_url, site.subdomain, 95)
    result = verify_only(database_url, source, site, **monitored())
    assert result.returncode == 1, result
    job = jobs(database_url, site.subdomain)[-1]
    assert (job["status"], job["verify_status"]) == ("failed", "failed"), job
    # The verification failed its job too: both say so, nothing else does.
    expect(result, failing=(JOBS, VERIFY))
    assert "1 verifications failed" in result.stderr, result
    assert "1 jobs failed (see backfill_jobs.last_error)" in result.stderr, result


def rejecting_site(source):
    """A site whose agendas hold 30 good rows and 4 that the mirror must reject."""
    rows = data.make_rows("agendas", 34, seed="monitors")
    bad = [
        {**rows[30], "date": "2024-13-45"},
        {**rows[31], "meeting": None},
        {**rows[32], "date": None},
        {**rows[33], "id": None},
    ]
    return source.create_site(agendas=rows[:30] + bad, minutes=0)


def test_rejected_rows_past_the_threshold_fail_the_rejected_rows_monitor(database_url, source):
    site = rejecting_site(source)
    register(database_url, site)
    args = (f"subdomain={site.subdomain}", "document_type=agenda", "full=true")

    by_default = crawl(database_url, source, *args, settings=monitored())
    assert by_default.returncode == 0, by_default  # monitors report; the exit status is the crawl's
    assert by_default.stats["civicband/rows/rejected"] == 4
    expect(by_default, failing=(REJECTED,))
    assert "4 rows rejected of 34 fetched; at most 0 allowed" in by_default.stderr, by_default

    at_threshold = crawl(
        database_url, source, *args, settings=monitored(CIVICBAND_MONITOR_MAX_REJECTED=4)
    )
    assert at_threshold.stats["civicband/rows/rejected"] == 4
    expect(at_threshold, failing=())

    past_it = crawl(
        database_url, source, *args, settings=monitored(CIVICBAND_MONITOR_MAX_REJECTED=3)
    )
    assert past_it.stats["civicband/rows/rejected"] == 4
    expect(past_it, failing=(REJECTED,))
    assert "4 rows rejected of 34 fetched; at most 3 allowed" in past_it.stderr, past_it


def test_the_finish_reason_is_judged_by_spidermons_own_setting(database_url, source):
    site = source.create_site(agendas=500, minutes=0)
    register(database_url, site)
    # Scrapy's CloseSpider ends the crawl after its first page, with its own finish reason.
    args = (f"subdomain={site.subdomain}", "document_type=agenda", "batch_size=50")
    stopped = crawl(database_url, source, *args, settings=monitored(CLOSESPIDER_PAGECOUNT=1))
    assert stopped.stats["finish_reason"] == "closespider_pagecount", stopped
    expect(stopped, failing=(FINISH,))
    assert 'Finished with "closespider_pagecount" the expected reasons are' in stopped.stderr

    expected = crawl(
        database_url,
        source,
        *args,
        "resume=true",
        settings=monitored(
            CLOSESPIDER_PAGECOUNT=1,
            SPIDERMON_EXPECTED_FINISH_REASONS="finished,closespider_pagecount",
        ),
    )
    assert expected.stats["finish_reason"] == "closespider_pagecount", expected
    expect(expected, failing=())


def test_without_spidermon_enabled_nothing_of_spidermon_runs(database_url, source):
    site = source.create_site(agendas=40, minutes=10)
    register(database_url, site)
    result = crawl(database_url, source, f"subdomain={site.subdomain}")
    assert result.returncode == 0, result
    assert ADDON in result.stderr, "the add-on was not listed: this proves nothing"
    assert not result.lines("(?i)spidermon"), result
    assert not [key for key in result.stats if key.startswith("civicband/monitors/")]
    assert_jobs_complete_and_exact(database_url, site)


def test_where_spidermon_is_not_installed_the_crawl_runs_and_says_why(
    database_url, source, tmp_path
):
    # A `spidermon` that cannot be imported, first on the path, noting every attempt.
    attempts = tmp_path / "attempts"
    stub = tmp_path / "path" / "spidermon"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text(
        f"with open({str(attempts)!r}, 'a') as f:\n"
        "    f.write('import\\n')\n"
        "raise ImportError('No module named spidermon (hidden by the test)')\n"
    )
    env = {"PYTHONPATH": str(stub.parent)}
    site = source.create_site(agendas=40, minutes=0)
    register(database_url, site)
    args = (f"subdomain={site.subdomain}", "document_type=agenda")

    off = crawl(database_url, source, *args, env=env)
    assert off.returncode == 0, off
    assert not attempts.exists(), "the crawl imported spidermon although SPIDERMON_ENABLED is off"
    assert not off.lines("(?i)spidermon"), off

    on = crawl(database_url, source, *args, "full=true", settings=monitored(), env=env)
    assert on.returncode == 0, on
    assert Path(attempts).read_text() == "import\n", "the stub was never tried: this proves nothing"
    (warning,) = on.lines(f"WARNING: Disabled {re.escape(ADDON)}: ")
    assert "SPIDERMON_ENABLED is set but Spidermon cannot be imported" in warning, warning
    assert "install civicband[monitoring]" in warning, warning
    assert not on.lines(r"\[Spidermon\]"), on
    assert not [key for key in on.stats if key.startswith("civicband/monitors/")]
    job = jobs(database_url, site.subdomain)[-1]
    assert (job["id"], job["status"], job["verify_status"]) == (2, "completed", "passed"), job
