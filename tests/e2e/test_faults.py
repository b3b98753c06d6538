"""Faults in front of real Datasette sites: retries with backoff, rate limits, public limits.

Every crawl is the real `scrapy crawl` against the look-alike and a real PostgreSQL. Waits are
measured on the crawler's own clock (tests/e2e/sendlog.py: when each download was scheduled,
started and ended), or, for what reaches the server, by causality: a request sent after the
crawler received an answer arrives after the server finished sending it (`done`). Nothing
sleeps in the test. Backoff and rate-limit windows are shortened by settings to keep the suite
fast; the code paths are the production ones.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.e2e.crawl import (
    SECRET,
    assert_jobs_complete_and_exact,
    crawl,
    expected,
    jobs,
    mirrored,
    page_requests,
    register,
)
from tests.e2e.crawl import execute as execute_sql
from tests.e2e.sendlog import read_sendlog, sendlog_settings

FAST = {
    "CIVICBAND_BACKOFF_BASE": 0.2,
    "CIVICBAND_BACKOFF_MAX": 1,
    "CIVICBAND_RATE_LIMIT_WINDOW": 1,
}


def first_page(site: Any, table: str) -> str:
    """A fault pattern for a table's first page (the one without a cursor)."""
    return rf"^/{re.escape(site.subdomain)}/meetings/{table}\.json\?(?!.*_next=)"


def page(site: Any, table: str, number: int, batch_size: int) -> str:
    """A fault pattern for page `number` (2 or more) of a table paged by id."""
    after = sorted(site.ids(table))[(number - 1) * batch_size - 1]
    return rf"^/{re.escape(site.subdomain)}/meetings/{table}\.json\?.*_next={after}%2C{after}"


def hits(source: Any, pattern: str) -> list[dict[str, Any]]:
    """Requests the look-alike saw that match a fault pattern, in arrival order."""
    found = [r for r in source.requests() if re.search(pattern, f"{r['path']}?{r['query']}")]
    return sorted(found, key=lambda r: r["time"])


def downloads(sendlog: Any, pattern: str) -> list[dict[str, Any]]:
    """The crawler's downloads whose URL matches a fault pattern, in the order they started."""
    found = [d for d in read_sendlog(sendlog) if re.search(pattern, _path_query(d["url"]))]
    return sorted(found, key=lambda d: d["start"])


def _path_query(url: str) -> str:
    return "/" + url.split("/", 3)[3]


def waits(tries: list[dict[str, Any]]) -> list[float]:
    """Seconds from the end of each try (the crawler had its answer) to the start of the next."""
    return [b["start"] - a["end"] for a, b in zip(tries, tries[1:], strict=False)]


def execute_register(database_url: str, *subdomains: str) -> None:
    """Sites named by host (the public-pace test) put into municipalities directly."""
    register(database_url)
    for subdomain in subdomains:
        execute_sql(database_url, "INSERT INTO municipalities (subdomain) VALUES (%s)", [subdomain])


def known_site(database_url, source, **sizes):
    """A site the mirror lists already: no probe request in front of its pages."""
    site = source.create_site(**sizes)
    register(database_url, site)
    return site


def test_5xx_and_interrupted_queries_are_retried_with_backoff(database_url, source, tmp_path):
    # Both Datasette lines: "interrupted" is a 500 on 1.0 and a 400 "SQL Interrupted" on 0.65.
    site = known_site(database_url, source, agendas=95, minutes=45)
    a1, a3, m2 = (
        first_page(site, "agendas"),
        page(site, "agendas", 3, 20),
        page(site, "minutes", 2, 20),
    )
    source.faults.add(match=a1, action="status", status=503, times=2)
    source.faults.add(match=a3, action="interrupted", times=1)
    source.faults.add(match=m2, action="interrupted", times=2)
    log = tmp_path / "sendlog"
    result = crawl(
        database_url,
        source,
        f"subdomain={site.subdomain}",
        "batch_size=20",
        settings={**FAST, **sendlog_settings(log)},
    )
    assert result.returncode == 0, str(result)
    assert_jobs_complete_and_exact(database_url, site)
    stats = result.stats
    assert stats["retry/count"] == 5
    assert stats["retry/reason_count/503 Service Unavailable"] == 2
    assert stats["retry/reason_count/datasette_interrupted"] == 3
    assert "retry/max_reached" not in stats
    # Waits: 0.2 s before a first retry, 0.4 s before a second (jitter only lengthens them).
    assert stats["civicband/retry/backoff_seconds"] >= 0.2 + 0.4 + 0.2 + 0.2 + 0.4
    assert [r["status"] for r in hits(source, a1)] == [503, 503, 200]
    first = downloads(log, a1)
    assert [d["status"] for d in first] == [503, 503, 200]
    assert waits(first)[0] >= 0.2 and waits(first)[1] >= 0.4
    interrupted = downloads(log, m2)
    assert [d["status"] for d in interrupted][-1] == 200 and len(interrupted) == 3
    assert interrupted[0]["status"] == (500 if source.version.startswith("1.") else 400)
    assert waits(interrupted)[0] >= 0.2 and waits(interrupted)[1] >= 0.4


@pytest.mark.datasette("ds10")
def test_html_truncated_json_and_a_hang_are_retried(database_url, source, tmp_path):
    site = known_site(database_url, source, agendas=70, minutes=30)
    html, cut = page(site, "agendas", 2, 20), page(site, "agendas", 3, 20)
    hung = first_page(site, "minutes")
    source.faults.add(match=html, action="html", times=1)
    source.faults.add(match=cut, action="truncate", times=1)
    source.faults.add(match=hung, action="hang", seconds=5, times=1)
    log = tmp_path / "sendlog"
    result = crawl(
        database_url,
        source,
        f"subdomain={site.subdomain}",
        "batch_size=20",
        settings={**FAST, "DOWNLOAD_TIMEOUT": 2, **sendlog_settings(log)},
    )
    assert result.returncode == 0, str(result)
    assert_jobs_complete_and_exact(database_url, site)
    stats = result.stats
    assert stats["retry/count"] == 3
    reasons = {k.removeprefix("retry/reason_count/"): v for k, v in stats.items() if "reason" in k}
    # The middleware's cheap check catches both; should a cut land just after a "}", the
    # spider's full parse retries it instead (civicband_bad_answer).
    assert reasons.get("civicband_not_json", 0) + reasons.get("civicband_bad_answer", 0) == 2
    assert sum(v for k, v in reasons.items() if "Timeout" in k) == 1, reasons
    for pattern in (html, cut):
        tries = hits(source, pattern)
        assert len(tries) == 2 and tries[0]["fault"] is not None and tries[0]["status"] == 200
        assert waits(downloads(log, pattern))[0] >= 0.2
    tries = downloads(log, hung)
    assert [d["status"] for d in tries] == ["DownloadTimeoutError", 200], tries
    # DOWNLOAD_TIMEOUT, on the crawler's own clock, then the backoff.
    assert tries[0]["end"] - tries[0]["start"] >= 2
    assert waits(tries)[0] >= 0.2


@pytest.mark.datasette("ds10")
def test_rate_limits_pause_every_site_and_do_not_use_up_retries(database_url, source, tmp_path):
    first = known_site(database_url, source, agendas=60, minutes=0)
    second = known_site(database_url, source, agendas=60, minutes=0)
    limited = page(first, "agendas", 2, 20)
    source.faults.add(match=limited, action="ratelimit", times=2)  # no Retry-After: the window
    source.faults.add(match=page(second, "agendas", 2, 20), action="ratelimit", retry_after=1)
    source.faults.add(match=page(first, "agendas", 3, 20), action="status", status=429)
    log = tmp_path / "sendlog"
    result = crawl(
        database_url,
        source,
        f"subdomain={first.subdomain},{second.subdomain}",
        "document_type=agenda",
        "batch_size=20",
        settings={**FAST, "RETRY_TIMES": 1, **sendlog_settings(log)},
    )
    assert result.returncode == 0, str(result)
    for site in (first, second):
        assert_jobs_complete_and_exact(database_url, site)
    stats = result.stats
    assert stats["civicband/ratelimit/waits"] == 4
    assert stats["civicband/ratelimit/seconds"] >= 1
    assert "retry/count" not in stats  # RETRY_TIMES=1, yet four rate limits were survived
    assert [r["status"] for r in hits(source, limited)] == [402, 402, 200]
    # The limit is per IP: once the crawler has a rate-limit answer, no site is asked anything
    # until its wait (1 s: Retry-After or the window) is over. Measured on the crawler's own
    # clock (when each download ended and started), not by arrival at the look-alike: a
    # request already past the pause check when the answer came may still start a moment
    # after it, but nothing starts later in the wait.
    everything = sorted(read_sendlog(log), key=lambda d: d["start"])
    answers = [d for d in everything if d["status"] in (402, 429)]
    assert len(answers) == 4, answers
    for answer in answers:
        during = [d for d in everything if answer["end"] + 0.2 < d["start"] < answer["end"] + 1]
        assert during == [], (answer, during)


@pytest.mark.datasette("ds10")
def test_a_rate_limit_that_never_ends_fails_the_job(database_url, source):
    site = known_site(database_url, source, agendas=30, minutes=0)
    source.faults.add(match=f"/{site.subdomain}/meetings/agendas", action="ratelimit", times=-1)
    result = crawl(
        database_url,
        source,
        f"subdomain={site.subdomain}",
        "document_type=agenda",
        settings={**FAST, "CIVICBAND_RATE_LIMIT_WINDOW": 0.3, "CIVICBAND_RATE_LIMIT_MAX_WAITS": 2},
    )
    assert result.returncode == 1, str(result)
    assert len(hits(source, f"/{site.subdomain}/meetings/agendas")) == 3
    assert result.stats["civicband/ratelimit/gave_up"] == 1
    assert "HTTP 402" in result.stderr


@pytest.mark.datasette("ds10")
def test_exhausted_retries_fail_the_job_and_keep_its_cursor(database_url, source):
    site = known_site(database_url, source, agendas=60, minutes=0)
    second = page(site, "agendas", 2, 20)
    source.faults.add(match=second, action="status", status=503, times=-1)
    result = crawl(
        database_url,
        source,
        f"subdomain={site.subdomain}",
        "document_type=agenda",
        "batch_size=20",
        settings={**FAST, "RETRY_TIMES": 1},
    )
    assert result.returncode == 1, str(result)
    (job,) = jobs(database_url, site.subdomain)
    assert job["status"] == "failed"
    assert job["retry_count"] == 1
    assert job["pages_fetched"] == 20 and job["pages_created"] == 20
    after = sorted(site.ids("agendas"))[19]
    assert job["last_cursor"] == f"{after},{after}"
    assert "HTTP 503" in job["last_error"]
    assert f"/{site.subdomain}/meetings/agendas.json" in job["last_error"]
    assert len(hits(source, second)) == 2  # the first try and RETRY_TIMES=1 retry
    assert result.stats["retry/max_reached"] == 1


@pytest.mark.datasette("ds065")
def test_interrupted_until_retries_run_out_counts_as_exhausted_on_065(database_url, source):
    site = known_site(database_url, source, agendas=30, minutes=0)
    source.faults.add(match="_next=", action="interrupted", times=-1)
    result = crawl(
        database_url,
        source,
        f"subdomain={site.subdomain}",
        "document_type=agenda",
        "batch_size=10",
        settings={**FAST, "RETRY_TIMES": 1},
    )
    assert result.returncode == 1, str(result)
    (job,) = jobs(database_url, site.subdomain)
    assert job["status"] == "failed" and "HTTP 400" in job["last_error"]
    assert job["pages_fetched"] == 10
    assert job["retry_count"] == 1


@pytest.mark.datasette("ds10")
def test_other_sites_keep_crawling_while_one_backs_off(database_url, source, tmp_path):
    slow = known_site(database_url, source, agendas=20, minutes=0)
    busy = known_site(database_url, source, agendas=200, minutes=0)
    failing = first_page(slow, "agendas")
    source.faults.add(match=failing, action="status", status=503, times=1)
    log = tmp_path / "sendlog"
    result = crawl(
        database_url,
        source,
        f"subdomain={slow.subdomain},{busy.subdomain}",
        "document_type=agenda",
        "batch_size=10",
        settings={
            "CIVICBAND_BACKOFF_BASE": 1,
            "CIVICBAND_BACKOFF_JITTER": 0,
            **sendlog_settings(log),
        },
    )
    assert result.returncode == 0, str(result)
    for site in (slow, busy):
        assert_jobs_complete_and_exact(database_url, site)
    failed, retried = downloads(log, failing)
    assert retried["start"] - failed["end"] >= 1.0
    meanwhile = [
        d
        for d in downloads(log, f"^/{busy.subdomain}/")
        if failed["end"] < d["start"] < retried["start"]
    ]
    assert len(meanwhile) >= 3, "the healthy site should be fetched during the other's backoff"


@pytest.mark.datasette("ds10")
def test_without_a_secret_every_site_shares_the_public_pace(database_url, source, tmp_path):
    # Two sites on two different host names, as civic.band's subdomains are: the site URL
    # template puts the "subdomain" in the host, and `localhost` and `127.0.0.1` both reach
    # the look-alike, which serves one site's data under both. (The unit tests show that the
    # spider's requests for oakland.ca.civic.band and berkeley.ca.civic.band share a slot.)
    site = source.create_site(agendas=250, minutes=0)
    port = source.base_url.rsplit(":", 1)[1]
    execute_register(database_url, "localhost", "127.0.0.1")
    source.ratelimit(per_minute=240, secret=SECRET, page_cap=True)
    source.faults.add(match=r"_next=", action="ratelimit", retry_after=1, times=1)
    log = tmp_path / "sendlog"
    result = crawl(
        database_url,
        source,
        "subdomain=localhost,127.0.0.1",
        "document_type=agenda",
        settings={
            "CIVICBAND_SITE_URL": f"http://{{subdomain}}:{port}/{site.subdomain}",
            "CIVICBAND_SERVICE_SECRET": "",
            "CIVICBAND_PUBLIC_REQUESTS_PER_MINUTE": 240,
            **sendlog_settings(log),
        },
    )
    assert result.returncode == 0, str(result)
    assert "No CIVICBAND_SERVICE_SECRET: public limits" in result.stderr
    source_rows = expected(site, "agendas")
    for host in ("localhost", "127.0.0.1"):
        assert mirrored(database_url, host, "agenda") == source_rows
    sent = sorted(source.requests(), key=lambda r: r["time"])
    hosts = [r["headers"]["host"].split(":")[0] for r in sent]
    assert set(hosts) == {"localhost", "127.0.0.1"}
    assert any(a != b for a, b in zip(hosts, hosts[1:], strict=False)), "sites interleave"
    assert all("x-service-secret" not in r["headers"] for r in sent)
    # Pages asked for at civic.band's public size (the batch size is 1000), so the
    # look-alike's own cap never had to cut one.
    pages = page_requests(source)
    assert all("_size=100&" in r["query"] and r["forwarded_query"] is None for r in pages)
    assert len(pages) == 2 * 3 + 1  # 100 + 100 + 50 rows per site, and one rate-limited retry
    assert len(sent) == len(pages) + 4  # and per site a count when it starts and a digest
    # 240 a minute: on the crawler's clock, every download of the shared slot is scheduled at
    # least 60/240 s (plus the 5 % margin) after the one before; after the 402 everything,
    # a request already queued in the slot included, waits out its Retry-After of 1 s.
    interval = 60 / 240 * 1.05
    done = sorted(read_sendlog(log), key=lambda d: d["scheduled"])
    assert len(done) == len(sent)
    for before, after in zip(done, done[1:], strict=False):
        assert after["scheduled"] - before["scheduled"] >= interval - 1e-9, (before, after)
        if before["status"] == 402:
            assert after["scheduled"] - before["end"] >= 1.0 - 1e-9, (before, after)
