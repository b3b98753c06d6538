"""Verification proves the copy equal (bucket digests, then ids), on both Datasette lines."""

from __future__ import annotations

import pytest

from tests.e2e.crawl import (
    assert_mirror_equals_source,
    backfilled,
    crawl,
    execute,
    fetch,
    is_by_id,
    is_digest,
    is_listing,
    jobs,
    mirrored,
    page_requests,
    sql_requests,
)


def drop_local(database_url: str, subdomain: str, n: int) -> None:
    """Lose n local pages of a site's agendas, as a broken earlier copy would have."""
    execute(
        database_url,
        "DELETE FROM meeting_pages WHERE ctid IN (SELECT ctid FROM meeting_pages"
        " WHERE subdomain = %s AND document_type = 'agenda' ORDER BY id LIMIT %s)",
        [subdomain, n],
    )


def verify_only(database_url, source, site, *extra, **settings):
    return crawl(
        database_url,
        source,
        f"subdomain={site.subdomain}",
        "document_type=agenda",
        "verify_only=true",
        *extra,
        settings=settings,
    )


def test_verify_only_on_an_exact_copy_passes_and_fetches_no_page(database_url, source):
    site = backfilled(database_url, source, agendas=250, minutes=0)
    source.clear_requests()
    result = verify_only(database_url, source, site)
    assert result.returncode == 0, result
    job = jobs(database_url, site.subdomain)[-1]
    assert (job["mode"], job["status"], job["verify_status"]) == ("verify", "completed", "passed")
    assert (job["expected_count"], job["actual_count"], job["pages_fetched"]) == (250, 250, 0)
    assert (job["missing_count"], job["extra_count"], job["stale_count"]) == (0, 0, 0)
    assert job["verified_at"] is not None
    sent = source.requests()
    assert len(sent) == 1 and is_digest(sent[0]), sent
    assert result.stats["civicband/verify/passed"] == 1


def test_999_of_1000_completes_with_a_warning(database_url, source):
    site = backfilled(database_url, source, agendas=1000, minutes=0)
    drop_local(database_url, site.subdomain, 1)
    result = verify_only(database_url, source, site)
    assert result.returncode == 0, result
    job = jobs(database_url, site.subdomain)[-1]
    assert (job["status"], job["verify_status"], job["missing_count"]) == ("completed", "warned", 1)
    assert result.stats["civicband/verify/missing"] == 1
    assert (result.stats["civicband/verify/warned"], result.stats["civicband/jobs/completed"]) == (
        1,
        1,
    )
    assert "civicband/verify/failed" not in result.stats
    assert "Missing 1 pages (within thresholds)" in job_message(result)


def job_message(result) -> str:
    lines = result.lines("verification (passed|warned|failed|unknown): ")
    assert lines, result
    return lines[-1]


def test_5_of_100_fails_then_resume_fetches_exactly_the_missing(database_url, source):
    site = backfilled(database_url, source, agendas=100, minutes=0)
    drop_local(database_url, site.subdomain, 95)
    result = verify_only(database_url, source, site)
    assert result.returncode == 1, result
    job = jobs(database_url, site.subdomain)[-1]
    assert (job["status"], job["verify_status"]) == ("failed", "failed")
    assert job["last_error"] == "Missing 95 pages! Expected 100, got 5"
    assert "Missing 95 pages! Expected 100, got 5" in result.stderr
    failed = result.stats
    assert (failed["civicband/verify/failed"], failed["civicband/jobs/failed"]) == (1, 1)
    assert failed["civicband/verify/missing"] == 95 and "civicband/verify/warned" not in failed
    source.clear_requests()
    resumed = crawl(
        database_url, source, f"subdomain={site.subdomain}", "document_type=agenda", "resume=true"
    )
    assert resumed.returncode == 0, resumed
    again = jobs(database_url, site.subdomain)[-1]
    assert again["id"] == job["id"]
    assert (again["mode"], again["status"], again["verify_status"]) == (
        "catchup",
        "completed",
        "passed",
    )
    assert (again["pages_fetched"], again["pages_created"]) == (95, 95)
    caught_up = resumed.stats
    assert (caught_up["civicband/catchup/fetched"], caught_up["civicband/catchup/created"]) == (
        95,
        95,
    )
    assert page_requests(source) == [], "resume paged through the table"
    assert_mirror_equals_source(database_url, site, ("agenda",))


def test_more_than_100_missing_fails_even_under_one_percent(database_url, source):
    # One 12,000-row copy, verified twice: 100 missing (0.83 %) warns, one more fails.
    site = backfilled(database_url, source, agendas=12_000, minutes=0)
    for dropped, missing, status in ((100, 100, "warned"), (1, 101, "failed")):
        drop_local(database_url, site.subdomain, dropped)
        result = verify_only(database_url, source, site)
        assert result.returncode == (1 if status == "failed" else 0), result
        job = jobs(database_url, site.subdomain)[-1]
        assert (job["verify_status"], job["missing_count"]) == (status, missing)


@pytest.mark.datasette("ds10")  # settings read by the verdict; both lines' digests: above
def test_thresholds_are_settings(database_url, source):
    site = backfilled(database_url, source, agendas=200, minutes=0)
    drop_local(database_url, site.subdomain, 3)
    strict = verify_only(
        database_url,
        source,
        site,
        CIVICBAND_VERIFY_MAX_MISSING_ROWS=2,
        CIVICBAND_VERIFY_MAX_MISSING_RATIO=0.5,
    )
    assert strict.returncode == 1, strict
    assert jobs(database_url, site.subdomain)[-1]["verify_status"] == "failed"
    by_ratio = verify_only(
        database_url,
        source,
        site,
        CIVICBAND_VERIFY_MAX_MISSING_ROWS=1000,
        CIVICBAND_VERIFY_MAX_MISSING_RATIO=0.01,
    )
    assert by_ratio.returncode == 1, by_ratio  # 3 of 200 is 1.5 %
    lenient = verify_only(
        database_url,
        source,
        site,
        CIVICBAND_VERIFY_MAX_MISSING_ROWS=3,
        CIVICBAND_VERIFY_MAX_MISSING_RATIO=0.02,
    )
    assert lenient.returncode == 0, lenient
    assert jobs(database_url, site.subdomain)[-1]["verify_status"] == "warned"


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


def test_a_swap_at_the_source_does_not_pass_and_the_next_run_is_exact(database_url, source):
    site = backfilled(database_url, source, agendas=300, minutes=0)
    gone = [row["id"] for row in site.rows("agendas")[:5]]
    swapped_in = site.new_rows("agendas", 5, seed="swap")
    site.delete_rows("agendas", gone)
    site.add_rows("agendas", swapped_in)
    assert len(site.rows("agendas")) == 300  # equal counts, different sets
    check = verify_only(database_url, source, site)
    assert check.returncode == 1, check
    job = jobs(database_url, site.subdomain)[-1]
    assert (job["verify_status"], job["missing_count"], job["extra_count"]) == ("failed", 5, 5)
    assert job["expected_count"] == job["actual_count"] == 300
    assert (check.stats["civicband/verify/missing"], check.stats["civicband/verify/extra"]) == (
        5,
        5,
    )
    result = crawl(database_url, source, f"subdomain={site.subdomain}", "document_type=agenda")
    assert result.returncode == 0, result
    last = jobs(database_url, site.subdomain)[-1]
    assert (last["mode"], last["verify_status"], last["pages_created"], last["pages_removed"]) == (
        "catchup",
        "passed",
        5,
        5,
    )
    assert_mirror_equals_source(database_url, site, ("agenda",))


def test_pages_changed_in_place_are_found_and_fetched_again(database_url, source):
    site = backfilled(database_url, source, agendas=200, minutes=0)
    changed = sorted(site.ids("agendas"))[::100]
    for row_id in changed:
        execute(
            database_url,
            'UPDATE meeting_pages SET entities_json = \'{"persons": ["Stale"]}\','
            " content_fp = content_fp + 1 WHERE id = %s",
            [row_id],
        )
    check = verify_only(database_url, source, site)
    assert check.returncode == 0, check
    job = jobs(database_url, site.subdomain)[-1]
    assert (job["verify_status"], job["stale_count"], job["missing_count"]) == (
        "warned",
        len(changed),
        0,
    )
    assert (check.stats["civicband/verify/stale"], check.stats["civicband/verify/warned"]) == (
        len(changed),
        1,
    )
    result = crawl(database_url, source, f"subdomain={site.subdomain}", "document_type=agenda")
    assert result.returncode == 0, result
    last = jobs(database_url, site.subdomain)[-1]
    assert (last["verify_status"], last["pages_updated"]) == ("passed", len(changed))
    # The catch-up fetched the out-of-date pages by id and rewrote them in place.
    stats = result.stats
    assert (stats["civicband/catchup/fetched"], stats["civicband/catchup/updated"]) == (
        len(changed),
        len(changed),
    )
    assert (stats["civicband/rows/updated"], stats["civicband/rows/created"]) == (len(changed), 0)
    assert_mirror_equals_source(database_url, site, ("agenda",))


def test_rows_removed_at_the_source_are_reported_then_removed(database_url, source):
    site = backfilled(database_url, source, agendas=150, minutes=0)
    gone = [row["id"] for row in site.rows("agendas")[:7]]
    site.delete_rows("agendas", gone)
    check = verify_only(database_url, source, site)
    assert check.returncode == 0, check
    job = jobs(database_url, site.subdomain)[-1]
    assert (job["verify_status"], job["missing_count"], job["extra_count"]) == ("warned", 0, 7)
    assert "7 pages the source no longer has" in check.stderr
    result = crawl(
        database_url, source, f"subdomain={site.subdomain}", "document_type=agenda", "full=true"
    )
    assert result.returncode == 0, result
    assert result.stats["civicband/verify/removed"] == 7
    assert not set(gone) & set(mirrored(database_url, site.subdomain, "agenda"))
    assert_mirror_equals_source(database_url, site, ("agenda",))
    last = jobs(database_url, site.subdomain)[-1]
    assert (last["verify_status"], last["pages_removed"]) == ("passed", 7)


def test_a_digest_that_times_out_is_unknown_not_a_mismatch(database_url, source):
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
    # The whole table, split once into 16 id ranges, the first retried once: then it gave up.
    assert len([r for r in sql_requests(source) if is_digest(r)]) == 1 + 2
    assert_mirror_equals_source(database_url, site, ("agenda",))


@pytest.mark.datasette("ds10")
def test_more_than_10001_rows_are_verified_exactly(database_url, source):
    site = source.create_site(agendas=10_050, minutes=0)
    result = crawl(database_url, source, f"subdomain={site.subdomain}", "document_type=agenda")
    assert result.returncode == 0, result
    job = jobs(database_url, site.subdomain)[-1]
    assert (job["expected_count"], job["actual_count"], job["verify_status"]) == (
        10_050,
        10_050,
        "passed",
    )
    assert assert_mirror_equals_source(database_url, site, ("agenda",)) == 10_050


def test_repair_fetches_exactly_the_rows_added_at_the_source(database_url, source):
    site = backfilled(database_url, source, agendas=3000, minutes=0)
    added = source.create_site(agendas=150, minutes=0).rows("agendas")
    added = [{**row, "id": "fe" + row["id"][2:]} for row in added]  # all in one bucket
    site.add_rows("agendas", added)
    check = verify_only(database_url, source, site)
    assert check.returncode == 1, check
    assert jobs(database_url, site.subdomain)[-1]["last_error"].startswith("Missing 150 pages!")
    source.clear_requests()
    result = crawl(
        database_url, source, f"subdomain={site.subdomain}", "document_type=agenda", "repair=true"
    )
    assert result.returncode == 0, result
    job = jobs(database_url, site.subdomain)[-1]
    assert (job["mode"], job["status"], job["verify_status"], job["pages_created"]) == (
        "catchup",
        "completed",
        "passed",
        150,
    )
    assert result.stats["civicband/catchup/created"] == 150
    assert result.stats["civicband/catchup/buckets"] == 1
    # The listing of bucket "fe" names every id the source has there, old and new.
    in_bucket = [i for i in site.ids("agendas") if i.startswith("fe")]
    assert result.stats["civicband/catchup/listed"] == len(in_bucket) > 150
    assert result.stats["civicband/digest/requests"] == 1  # verification reused it
    assert page_requests(source) == [], "repair paged through the table"
    sent = sql_requests(source)
    # the digest, one listing of bucket "fe", its 150 rows by id (as many as fit a URL), and
    # nothing more: verification judges against the digest the catch-up took.
    digests, listings = [r for r in sent if is_digest(r)], [r for r in sent if is_listing(r)]
    by_id = [r for r in sent if is_by_id(r)]
    assert (len(digests), len(listings), len(sent)) == (1, 1, 2 + len(by_id)), sent
    assert 1 <= len(by_id) <= 2
    assert_mirror_equals_source(database_url, site, ("agenda",))


def test_repair_deletes_rows_the_source_no_longer_has(database_url, source):
    site = backfilled(database_url, source, agendas=400, minutes=0)
    gone = [row["id"] for row in site.rows("agendas")[::50]]
    site.delete_rows("agendas", gone)
    result = crawl(
        database_url, source, f"subdomain={site.subdomain}", "document_type=agenda", "repair=true"
    )
    assert result.returncode == 0, result
    assert result.stats["civicband/catchup/deleted"] == len(gone)
    assert not set(gone) & set(mirrored(database_url, site.subdomain, "agenda"))
    assert_mirror_equals_source(database_url, site, ("agenda",))
    assert jobs(database_url, site.subdomain)[-1]["verify_status"] == "passed"


def test_repair_deletes_nothing_when_a_listing_fails(database_url, source):
    site = backfilled(database_url, source, agendas=200, minutes=0)
    gone = [row["id"] for row in site.rows("agendas")[:5]]
    site.delete_rows("agendas", gone)
    source.faults.add(match=r"as\+packed", action="status", status=503, times=-1)
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
    assert job["status"] == "failed" and job["last_error"].startswith("catch-up: HTTP 503")


@pytest.mark.datasette("ds10")  # refused before any request: no Datasette line is involved
def test_verify_only_and_repair_refuse_a_site_the_mirror_does_not_know(database_url, source):
    site = source.create_site(agendas=5, minutes=0)
    for mode in ("verify_only=true", "repair=true"):
        result = crawl(database_url, source, f"subdomain={site.subdomain}", mode)
        assert result.returncode == 1, result
        assert "is not in municipalities: nothing to verify or repair" in result.stderr
    assert source.requests() == []
    assert jobs(database_url) == []


@pytest.mark.datasette("ds10")  # municipalities.pages against job counts: no line in it
def test_index_page_total_is_cross_checked(database_url, source):
    site = backfilled(database_url, source, agendas=12, minutes=8)
    execute(
        database_url, "UPDATE municipalities SET pages = 25 WHERE subdomain = %s", [site.subdomain]
    )
    result = crawl(database_url, source, f"subdomain={site.subdomain}", "verify_only=true")
    assert result.returncode == 0, result
    assert "index lists 25 pages, its sites count 12 agendas + 8 minutes" in result.stderr
    assert result.stats["civicband/verify/index_mismatch"] >= 1
    execute(
        database_url, "UPDATE municipalities SET pages = 20 WHERE subdomain = %s", [site.subdomain]
    )
    again = crawl(database_url, source, f"subdomain={site.subdomain}", "verify_only=true")
    assert again.returncode == 0, again
    assert "index lists" not in again.stderr
    assert "civicband/verify/index_mismatch" not in again.stats
    assert fetch(database_url, "SELECT count(*) AS n FROM backfill_jobs")[0]["n"] == 6
