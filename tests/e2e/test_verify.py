"""Verification against the source's own count, on both Datasette lines."""

from __future__ import annotations

import psycopg
import pytest

from tests.e2e.crawl import crawl, fetch, jobs, mirrored
from tests.e2e.test_backfill import assert_mirror_equals_source


def drop_local(database_url: str, subdomain: str, n: int) -> None:
    """Lose n local pages of a site's agendas, as a broken earlier copy would have."""
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "DELETE FROM meeting_pages WHERE ctid IN (SELECT ctid FROM meeting_pages"
            " WHERE subdomain = %s AND document_type = 'agenda' LIMIT %s)",
            [subdomain, n],
        )


def verify_only(database_url, source, site, **settings):
    return crawl(
        database_url,
        source,
        f"subdomain={site.subdomain}",
        "document_type=agenda",
        "verify_only=true",
        settings=settings,
    )


def test_verify_only_on_an_exact_copy_passes_and_fetches_no_page(database_url, source):
    site = source.create_site(agendas=250, minutes=0)
    assert crawl(database_url, source, f"subdomain={site.subdomain}").returncode == 0
    source.clear_requests()
    result = verify_only(database_url, source, site)
    assert result.returncode == 0, result
    job = jobs(database_url, site.subdomain)[-1]
    assert (job["status"], job["verify_status"]) == ("completed", "passed")
    assert (job["expected_count"], job["actual_count"], job["pages_fetched"]) == (250, 250, 0)
    assert job["verified_at"] is not None
    assert all("sql=" in r["query"] for r in source.requests())
    assert result.stats["civicband/verify/passed"] == 1


def test_999_of_1000_completes_with_a_warning(database_url, source):
    site = source.create_site(agendas=1000, minutes=0)
    assert crawl(database_url, source, f"subdomain={site.subdomain}").returncode == 0
    drop_local(database_url, site.subdomain, 1)
    result = verify_only(database_url, source, site)
    assert result.returncode == 0, result
    job = jobs(database_url, site.subdomain)[-1]
    assert (job["status"], job["verify_status"], job["missing_count"]) == ("completed", "warned", 1)
    assert result.stats["civicband/verify/missing"] == 1


def test_5_of_100_fails_then_resume_recrawls_it(database_url, source):
    site = source.create_site(agendas=100, minutes=0)
    assert crawl(database_url, source, f"subdomain={site.subdomain}").returncode == 0
    drop_local(database_url, site.subdomain, 95)
    result = verify_only(database_url, source, site)
    assert result.returncode == 1, result
    job = jobs(database_url, site.subdomain)[-1]
    assert (job["status"], job["verify_status"]) == ("failed", "failed")
    assert job["last_error"] == "Missing 95 pages! Expected 100, got 5"
    assert "Missing 95 pages! Expected 100, got 5" in result.stderr
    resumed = crawl(
        database_url, source, f"subdomain={site.subdomain}", "document_type=agenda", "resume=true"
    )
    assert resumed.returncode == 0, resumed
    again = jobs(database_url, site.subdomain)[-1]
    assert again["id"] == job["id"]
    assert (again["status"], again["verify_status"], again["pages_created"]) == (
        "completed",
        "passed",
        95,
    )
    assert_mirror_equals_source(database_url, site, ("agenda",))


def test_rejected_rows_explain_a_gap(database_url, source):
    base = source.create_site(agendas=20, minutes=0).rows("agendas")
    bad = [{**base[0], "id": "bad000000001", "date": "2024-99-99"}]
    site = source.create_site(agendas=base[1:] + bad, minutes=0)
    result = crawl(database_url, source, f"subdomain={site.subdomain}", "document_type=agenda")
    assert result.returncode == 0, result
    job = jobs(database_url, site.subdomain)[-1]
    assert (job["expected_count"], job["actual_count"], job["rejected_count"]) == (20, 19, 1)
    assert (job["verify_status"], job["missing_count"]) == ("passed", 0)
    assert result.stats["civicband/verify/rejected"] == 1


def test_rows_removed_at_the_source_are_swept_by_the_next_full_pass(database_url, source):
    site = source.create_site(agendas=150, minutes=0)
    assert crawl(database_url, source, f"subdomain={site.subdomain}").returncode == 0
    gone = [row["id"] for row in site.rows("agendas")[:7]]
    site.delete_rows("agendas", gone)
    check = verify_only(database_url, source, site)
    assert check.returncode == 0, check
    job = jobs(database_url, site.subdomain)[-1]
    assert (job["verify_status"], job["missing_count"]) == ("warned", -7)
    assert "7 pages the source no longer has" in check.stderr
    result = crawl(
        database_url, source, f"subdomain={site.subdomain}", "document_type=agenda", "batch_size=40"
    )
    assert result.returncode == 0, result
    assert result.stats["civicband/verify/removed"] == 7
    assert not set(gone) & set(mirrored(database_url, site.subdomain, "agenda"))
    assert_mirror_equals_source(database_url, site, ("agenda",))
    assert jobs(database_url, site.subdomain)[-1]["verify_status"] == "passed"


def test_a_count_that_times_out_is_unknown_not_a_mismatch(database_url, source):
    site = source.create_site(agendas=30, minutes=0)
    source.faults.add(match="sql=", action="interrupted", times=-1)
    result = crawl(
        database_url,
        source,
        f"subdomain={site.subdomain}",
        "document_type=agenda",
        settings={"RETRY_TIMES": 1, "CIVICBAND_BACKOFF_BASE": 0.05, "CIVICBAND_BACKOFF_MAX": 0.1},
    )
    assert result.returncode == 0, result
    job = jobs(database_url, site.subdomain)[-1]
    assert (job["status"], job["verify_status"], job["expected_count"]) == (
        "completed",
        "unknown",
        None,
    )
    assert job["actual_count"] == 30
    assert result.stats["civicband/verify/unknown"] == 1


@pytest.mark.datasette("ds10")
def test_more_than_10001_rows_are_counted_exactly(database_url, source):
    site = source.create_site(agendas=10_050, minutes=0)
    result = crawl(database_url, source, f"subdomain={site.subdomain}", "document_type=agenda")
    assert result.returncode == 0, result
    job = jobs(database_url, site.subdomain)[-1]
    assert (job["expected_count"], job["actual_count"], job["verify_status"]) == (
        10_050,
        10_050,
        "passed",
    )
    count = fetch(database_url, "SELECT count(*) AS n FROM meeting_pages")[0]["n"]
    assert count == 10_050


def repair(database_url, source, site, *extra):
    return crawl(
        database_url,
        source,
        f"subdomain={site.subdomain}",
        "document_type=agenda",
        "repair=true",
        *extra,
    )


def test_repair_fetches_exactly_the_rows_added_at_the_source(database_url, source):
    site = source.create_site(agendas=3000, minutes=0)
    assert crawl(database_url, source, f"subdomain={site.subdomain}").returncode == 0
    added = source.create_site(agendas=150, minutes=0).rows("agendas")
    added = [{**row, "id": "fe" + row["id"][2:]} for row in added]  # all in one bucket
    site.add_rows("agendas", added)
    check = verify_only(database_url, source, site)
    assert check.returncode == 1, check
    assert jobs(database_url, site.subdomain)[-1]["last_error"].startswith("Missing 150 pages!")
    source.clear_requests()
    result = repair(database_url, source, site)
    assert result.returncode == 0, result
    job = jobs(database_url, site.subdomain)[-1]
    assert (job["status"], job["verify_status"], job["pages_created"]) == (
        "completed",
        "passed",
        150,
    )
    assert result.stats["civicband/repair/created"] == 150
    assert result.stats["civicband/repair/buckets"] == 1
    sent = [r["query"] for r in source.requests()]
    assert not [q for q in sent if "_sort=id" in q], "repair paged through the table"
    # bucket counts, one listing of bucket "fe", its 150 rows by id (60 a request), the count;
    # on 0.65 the first SQL request learns that it has no /-/query endpoint.
    probe = 1 if source.version.startswith("0.65") else 0
    assert len(sent) == probe + 1 + 1 + 3 + 1, sent
    assert_mirror_equals_source(database_url, site, ("agenda",))


def test_repair_deletes_rows_the_source_no_longer_has(database_url, source):
    site = source.create_site(agendas=400, minutes=0)
    assert crawl(database_url, source, f"subdomain={site.subdomain}").returncode == 0
    gone = [row["id"] for row in site.rows("agendas")[::50]]
    site.delete_rows("agendas", gone)
    result = repair(database_url, source, site)
    assert result.returncode == 0, result
    assert result.stats["civicband/repair/deleted"] == len(gone)
    assert not set(gone) & set(mirrored(database_url, site.subdomain, "agenda"))
    assert_mirror_equals_source(database_url, site, ("agenda",))
    assert jobs(database_url, site.subdomain)[-1]["verify_status"] == "passed"


def test_repair_deletes_nothing_when_a_listing_fails(database_url, source):
    site = source.create_site(agendas=200, minutes=0)
    assert crawl(database_url, source, f"subdomain={site.subdomain}").returncode == 0
    gone = [row["id"] for row in site.rows("agendas")[:5]]
    site.delete_rows("agendas", gone)
    source.faults.add(match="low=", action="status", status=503, times=-1)
    result = crawl(
        database_url,
        source,
        f"subdomain={site.subdomain}",
        "document_type=agenda",
        "repair=true",
        settings={"RETRY_TIMES": 1},
    )
    assert result.returncode == 1, result
    assert set(gone) <= set(mirrored(database_url, site.subdomain, "agenda"))
    job = jobs(database_url, site.subdomain)[-1]
    assert job["status"] == "failed" and job["last_error"].startswith("repair: HTTP 503")


def test_index_page_total_is_cross_checked(database_url, source):
    site = source.create_site(agendas=12, minutes=8)
    assert crawl(database_url, source, f"subdomain={site.subdomain}").returncode == 0
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE municipalities SET pages = 25 WHERE subdomain = %s", [site.subdomain])
    result = verify_only(database_url, source, site)
    assert result.returncode == 0, result
    assert "index lists 25 pages, its sites count 12 agendas + 8 minutes" in result.stderr
    assert result.stats["civicband/verify/index_mismatch"] == 1
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE municipalities SET pages = 20 WHERE subdomain = %s", [site.subdomain])
    again = verify_only(database_url, source, site)
    assert "civicband/verify/index_mismatch" not in again.stats
