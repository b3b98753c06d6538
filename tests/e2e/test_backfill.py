"""End to end: the real crawl command against real Datasette sites and a real PostgreSQL."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.e2e.crawl import (
    SECRET,
    TABLES,
    assert_jobs_complete_and_exact,
    assert_mirror_equals_source,
    crawl,
    fetch,
    is_count,
    is_digest,
    jobs,
    mirrored,
    page_requests,
    register,
    sql_requests,
)
from tests.lookalike import data


def test_crawl_mirrors_several_sites_exactly(database_url, source):
    sites = [
        source.create_site(agendas=230, minutes=120),
        source.create_site(agendas=75, minutes=0),
        source.create_site(agendas=40, minutes=61, legacy=True),
    ]
    names = ",".join(site.subdomain for site in sites)
    result = crawl(database_url, source, f"subdomain={names}", "batch_size=50")
    assert result.returncode == 0, result
    for site in sites:
        assert_jobs_complete_and_exact(database_url, site)
        for job in jobs(database_url, site.subdomain):
            total = len(site.rows(TABLES[job["document_type"]]))
            assert job["errors_encountered"] == 0 and job["last_error"] is None
            assert (job["expected_count"], job["actual_count"], job["mode"]) == (
                total,
                total,
                "full",
            )
    assert len(jobs(database_url)) == 6
    stats = result.stats
    assert stats["civicband/rows/created"] == sum(
        len(site.rows(t)) for site in sites for t in TABLES.values()
    )
    assert stats["civicband/sites/added"] == 3
    assert stats["civicband/exit_code"] == 0
    # Honest user agent, the secret sent as a header and never logged.
    sent = source.requests()
    assert sent and all(r["headers"]["user-agent"].startswith("civicband/") for r in sent)
    assert all(r["headers"].get("x-service-secret") == SECRET for r in sent)
    # Every table paged by id, 50 rows at a time, each page once (an empty table: one page).
    pages = page_requests(source)
    assert Counter(r["path"] for r in pages) == {
        f"/{site.subdomain}/meetings/{table}.json": max(1, -(-len(site.rows(table)) // 50))
        for site in sites
        for table in TABLES.values()
    }
    assert all("_sort=id" in r["query"] and "_size=50" in r["query"] for r in pages)
    # One probe per new site; per job one count (for progress) and one digest (verification).
    probes = [r for r in sent if r["path"].endswith("/meetings.json") and not r["query"]]
    assert len(probes) == 3
    sql = [r for r in sql_requests(source) if r["status"] == 200]
    assert len([r for r in sql if is_count(r)]) == 6
    assert len([r for r in sql if is_digest(r)]) == 6
    assert len(sql) == 12
    assert SECRET not in result.stderr + result.stdout


def test_a_full_rerun_counts_every_row_as_updated_and_duplicates_nothing(database_url, source):
    site = source.create_site(agendas=120, minutes=33)
    assert crawl(database_url, source, f"subdomain={site.subdomain}").returncode == 0
    before = fetch(database_url, "SELECT count(*) AS n FROM meeting_pages")[0]["n"]
    result = crawl(
        database_url, source, f"subdomain={site.subdomain}", "batch_size=40", "full=true"
    )
    assert result.returncode == 0, result
    assert fetch(database_url, "SELECT count(*) AS n FROM meeting_pages")[0]["n"] == before == 153
    second = [job for job in jobs(database_url) if job["id"] > 2]
    assert sorted((j["mode"], j["pages_created"], j["pages_updated"]) for j in second) == [
        ("full", 0, 33),
        ("full", 0, 120),
    ]
    assert result.stats["civicband/rows/changed"] == 0
    assert_mirror_equals_source(database_url, site)


def test_an_unchanged_site_is_caught_up_with_one_request(database_url, source):
    site = source.create_site(agendas=320, minutes=45)
    register(database_url, site)
    assert crawl(database_url, source, f"subdomain={site.subdomain}").returncode == 0
    source.clear_requests()
    result = crawl(database_url, source, f"subdomain={site.subdomain}")
    assert result.returncode == 0, result
    caught_up = jobs(database_url)[2:]
    assert [(j["mode"], j["status"], j["verify_status"]) for j in caught_up] == [
        ("catchup", "completed", "passed")
    ] * 2
    assert [(j["pages_fetched"], j["pages_created"], j["pages_updated"]) for j in caught_up] == [
        (0, 0, 0)
    ] * 2
    sent = source.requests()
    assert len(sent) == 1 and is_digest(sent[0]), sent  # both tables in one answer
    assert result.stats["civicband/catchup/buckets"] == 0
    assert_mirror_equals_source(database_url, site)


def test_hostile_rows_are_stored_exactly_or_quarantined(database_url, source):
    good = source.create_site(
        agendas=data.make_rows("agendas", 60, seed="h", hostile=True), minutes=0
    )
    rows = good.rows("agendas")
    digits = {**rows[0], "id": "123456789012"}
    hostile = [
        {**rows[1], "id": "aaaaaaaaaaa1", "date": "2024-13-45"},
        {**rows[2], "id": "aaaaaaaaaaa2", "meeting": None},
        {**rows[3], "id": "aaaaaaaaaaa3", "date": None},
        {**rows[4], "id": "aaaaaaaaaaa4", "text": "nul\x00inside\x00", "meeting": "Coun\x00cil"},
        {**rows[5], "id": "aaaaaaaaaaa5", "entities_json": "{broken", "votes_json": "[1,"},
        digits,
        {**rows[6], "id": None},
    ]
    site = source.create_site(agendas=rows + hostile, minutes=0)
    result = crawl(database_url, source, f"subdomain={site.subdomain}", "document_type=agenda")
    assert result.returncode == 0, result
    # Every storable row, all eight columns, equals the source (NULs removed).
    assert assert_mirror_equals_source(database_url, site, ("agenda",)) == 60 + 3
    stored = mirrored(database_url, site.subdomain, "agenda")
    assert stored["aaaaaaaaaaa4"]["text"] == "nulinside"
    assert stored["aaaaaaaaaaa4"]["meeting"] == "Council"
    assert stored["aaaaaaaaaaa5"]["entities_json"] == "{broken"
    rejected = fetch(
        database_url,
        "SELECT row_id, reason, raw, job_id FROM rejected_rows WHERE subdomain = %s"
        " ORDER BY row_id NULLS LAST",
        [site.subdomain],
    )
    assert [(r["row_id"], r["reason"]) for r in rejected] == [
        ("aaaaaaaaaaa1", "date is not a valid YYYY-MM-DD"),
        ("aaaaaaaaaaa2", "missing meeting"),
        ("aaaaaaaaaaa3", "missing date"),
        (None, "missing or invalid id"),
    ]
    assert all(r["raw"] and r["job_id"] for r in rejected)
    assert '"2024-13-45"' in rejected[0]["raw"]
    (job,) = jobs(database_url, site.subdomain)
    assert (job["status"], job["verify_status"]) == ("completed", "passed")
    assert job["errors_encountered"] == 4
    assert job["pages_fetched"] == 67 and job["pages_created"] == 63
    stats = result.stats
    nuls = sum(
        value.count("\x00")
        for row in site.rows("agendas")
        if row["id"] is not None
        and row["id"] not in ("aaaaaaaaaaa1", "aaaaaaaaaaa2", "aaaaaaaaaaa3")
        for value in row.values()
        if isinstance(value, str)
    )
    assert nuls > 3 and stats["civicband/rows/nul_removed"] == nuls
    assert stats["civicband/rows/rejected"] == 4
    # A re-crawl meets the same bad rows again: still four rejections, not eight.
    again = crawl(database_url, source, f"subdomain={site.subdomain}", "full=true")
    assert again.returncode == 0, again
    assert fetch(database_url, "SELECT count(*) AS n FROM rejected_rows")[0]["n"] == 4


def test_a_lone_surrogate_is_rejected_with_its_reason_and_the_page_stored(database_url, source):
    site = source.create_site(agendas=40, minutes=0)
    hit = sorted(site.rows("agendas"), key=lambda r: r["id"])[7]
    # JSON can carry half a surrogate pair; PostgreSQL (UTF-8) cannot store it.
    source.faults.add(
        match=f"/{site.subdomain}/meetings/agendas.json",
        action="rewrite",
        old=hit["text"][:60],
        new=r"\ud800" + hit["text"][6:60],
    )
    result = crawl(database_url, source, f"subdomain={site.subdomain}", "document_type=agenda")
    assert result.returncode == 0, result
    rejected = fetch(database_url, "SELECT row_id, reason, raw FROM rejected_rows")
    assert [(r["row_id"], r["reason"]) for r in rejected] == [
        (hit["id"], "text is not valid Unicode (half a surrogate pair)")
    ]
    assert "\\ud800" in rejected[0]["raw"]
    stored = mirrored(database_url, site.subdomain, "agenda")
    assert set(stored) == site.ids("agendas") - {hit["id"]}
    (job,) = jobs(database_url, site.subdomain)
    assert (job["status"], job["errors_encountered"], job["verify_status"]) == (
        "completed",
        1,
        "passed",
    )


@pytest.mark.datasette("ds10")  # the mirror's keys are the subject, not the line
def test_same_id_on_two_sites_makes_two_pages(database_url, source):
    first = source.create_site(agendas=10, minutes=0)
    shared = first.rows("agendas")[:3]
    second = source.create_site(agendas=shared, minutes=0)
    result = crawl(
        database_url,
        source,
        f"subdomain={first.subdomain},{second.subdomain}",
        "document_type=agenda",
    )
    assert result.returncode == 0, result
    for site in (first, second):
        assert_mirror_equals_source(database_url, site, ("agenda",))
    count = fetch(
        database_url, "SELECT count(*) AS n FROM meeting_pages WHERE id = %s", [shared[0]["id"]]
    )
    assert count[0]["n"] == 2


@pytest.mark.datasette("ds10")  # documents are regrouped in PostgreSQL, whatever the line
def test_page_whose_meeting_changed_moves_to_its_new_document(database_url, source):
    site = source.create_site(agendas=12, minutes=0)
    assert crawl(database_url, source, f"subdomain={site.subdomain}").returncode == 0
    rows = site.rows("agendas")
    lonely = {**rows[0], "meeting": "Special Session", "date": "1999-12-31"}
    site.rebuild(agendas=[lonely, *rows[1:]], minutes=[])
    result = crawl(database_url, source, f"subdomain={site.subdomain}", "full=true")
    assert result.returncode == 0, result
    assert_mirror_equals_source(database_url, site, ("agenda",))
    documents = fetch(
        database_url,
        "SELECT d.meeting_name, d.meeting_date::text AS date, count(p.id) AS pages"
        " FROM meeting_documents d LEFT JOIN meeting_pages p ON p.document_id = d.id"
        " WHERE d.subdomain = %s GROUP BY 1, 2",
        [site.subdomain],
    )
    assert {"meeting_name": "Special Session", "date": "1999-12-31", "pages": 1} in documents
    assert all(doc["pages"] > 0 for doc in documents), "a document left empty behind"


@pytest.mark.datasette("ds10")  # `all` reads municipalities; catch-ups on 0.65: test_catchup
def test_new_site_joins_municipalities_and_all_catches_up_every_one(database_url, source):
    first = source.create_site(agendas=5, minutes=4)
    second = source.create_site(agendas=3, minutes=2)
    for site in (first, second):
        assert crawl(database_url, source, f"subdomain={site.subdomain}").returncode == 0
    known = fetch(database_url, "SELECT subdomain FROM municipalities ORDER BY 1")
    assert [r["subdomain"] for r in known] == sorted([first.subdomain, second.subdomain])
    first.add_rows("agendas", data.make_rows("agendas", 2, seed="later"))
    result = crawl(database_url, source, "subdomain=all")
    assert result.returncode == 0, result
    assert len(jobs(database_url)) == 8
    assert [j["mode"] for j in jobs(database_url)[4:]] == ["catchup"] * 4
    assert result.stats["civicband/catchup/created"] == 2
    for site in (first, second):
        assert_mirror_equals_source(database_url, site)


@pytest.mark.datasette("ds10")  # the look-alike's router answers (a redirect), not Datasette
def test_unknown_site_fails_at_once_and_is_not_added(database_url, source):
    result = crawl(database_url, source, "subdomain=nowhere.zz")
    assert result.returncode == 1, result
    assert "unknown site" in result.stderr
    assert result.lines("Summary")[-1:] and "nowhere.zz: not crawled: unknown site" in result.stderr
    assert fetch(database_url, "SELECT count(*) AS n FROM municipalities")[0]["n"] == 0
    tries = [r for r in source.requests() if r["path"].startswith("/nowhere.zz/")]
    assert len(tries) == 1  # one probe, no retries


def test_html_at_200_is_an_error_not_an_empty_page(database_url, source):
    site = source.create_site(agendas=120, minutes=0)
    assert crawl(database_url, source, f"subdomain={site.subdomain}").returncode == 0
    site.add_rows("agendas", [{**site.rows("agendas")[0], "id": "ffffffffffff"}])
    # Page 1 answers; every later page is a bot wall: the job fails, keeping page 1 and its cursor.
    source.faults.add(
        match=f"/{site.subdomain}/meetings/agendas.json.*_next=", action="html", times=-1
    )
    result = crawl(
        database_url,
        source,
        f"subdomain={site.subdomain}",
        "document_type=agenda",
        "batch_size=50",
        "full=true",
        settings={"RETRY_TIMES": 2},
    )
    assert result.returncode == 1, result
    job = jobs(database_url, site.subdomain)[-1]
    assert job["status"] == "failed"
    assert "HTML" in job["last_error"] and site.subdomain in job["last_error"]
    assert job["pages_fetched"] == 50 and job["last_cursor"] is not None
    assert job["retry_count"] == 1
    assert "ffffffffffff" not in mirrored(database_url, site.subdomain, "agenda")
    paged = [r for r in source.requests() if "_next=" in r["query"]]
    assert len(paged) == 3  # the first try and RETRY_TIMES retries
    assert result.lines("Summary")
    assert f"{site.subdomain}/agenda job {job['id']} (full): failed" in result.stderr


@pytest.mark.datasette("ds10")  # the bot wall answers every request: Datasette is never asked
def test_new_site_behind_a_bot_wall_is_not_added(database_url, source):
    site = source.create_site(agendas=20, minutes=0)
    source.faults.add(match=f"/{site.subdomain}/", action="html", times=-1)
    result = crawl(
        database_url,
        source,
        f"subdomain={site.subdomain}",
        "document_type=agenda",
        settings={"RETRY_TIMES": 1},
    )
    assert result.returncode == 1, result
    assert "HTML" in result.stderr
    assert result.stats["civicband/sites/failed"] == 1
    assert fetch(database_url, "SELECT count(*) AS n FROM municipalities")[0]["n"] == 0
    assert fetch(database_url, "SELECT count(*) AS n FROM meeting_pages")[0]["n"] == 0


def test_truncated_json_is_retried_then_stored(database_url, source):
    site = source.create_site(agendas=25, minutes=0)
    source.faults.add(match=f"/{site.subdomain}/meetings/agendas", action="truncate", times=1)
    result = crawl(database_url, source, f"subdomain={site.subdomain}", "document_type=agenda")
    assert result.returncode == 0, result
    assert_jobs_complete_and_exact(database_url, site, document_types=("agenda",))
    assert result.stats["retry/count"] == 1


def test_other_4xx_fails_the_job_with_status_and_url(database_url, source):
    site = source.create_site(agendas=25, minutes=10)
    register(database_url, site)
    source.faults.add(match=f"/{site.subdomain}/meetings/minutes", action="status", status=403)
    result = crawl(database_url, source, f"subdomain={site.subdomain}")
    assert result.returncode == 1, result
    by_type = {job["document_type"]: job for job in jobs(database_url, site.subdomain)}
    assert by_type["agenda"]["status"] == "completed"
    assert by_type["minutes"]["status"] == "failed"
    assert "HTTP 403" in by_type["minutes"]["last_error"]
    assert f"/{site.subdomain}/meetings/minutes.json" in by_type["minutes"]["last_error"]
    assert len(page_requests(source, site.subdomain)) == 2  # a 403 is not retried


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["subdomain=oakland.ca", "document_type=agendas"], "document_type"),
        (["subdomain=https://evil.example/x"], "subdomain"),
        (["subdomain=oakland.ca/../../x"], "subdomain"),
        (["subdomain=oakland.ca", "batch_size=0"], "batch_size"),
        (["subdomain=oakland.ca", "batch_size=1001"], "batch_size"),
        (["subdomain=oakland.ca", "resume=perhaps"], "resume"),
        (["subdomain=oakland.ca", "full=maybe"], "full"),
        (["subdomain=oakland.ca", "allow_shrink=2"], "allow_shrink"),
        (["subdomain=oakland.ca", "repair=true", "verify_only=true"], "repair"),
        (["subdomain=oakland.ca", "full=true", "repair=yes"], "full"),
        ([], "subdomain"),
    ],
)
def test_bad_arguments_exit_2_with_one_line_and_fetch_nothing(
    database_url, source_ds10, args, named
):
    result = crawl(database_url, source_ds10, *args)
    assert result.returncode == 2, result
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and f"{named}:" in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert source_ds10.requests() == []


def test_all_with_empty_municipalities_exits_2(database_url, source_ds10):
    result = crawl(database_url, source_ds10, "subdomain=all")
    assert result.returncode == 2, result
    assert "municipalities table is empty" in result.stderr
    assert "Traceback" not in result.stderr
    assert source_ds10.requests() == []


def test_unreachable_database_exits_2_without_the_password(source_ds10):
    site = source_ds10.create_site(agendas=3, minutes=0)
    url = "postgresql://mirror:hunter2@127.0.0.1:9/civicband"
    result = crawl(url, source_ds10, f"subdomain={site.subdomain}")
    assert result.returncode == 2, result
    assert "hunter2" not in result.stderr
    assert "mirror:***@127.0.0.1:9" in result.stderr
    assert "Traceback" not in result.stderr
    assert source_ds10.requests() == []


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CIVICBAND_SHRINK_GUARD", "2"),
        ("CIVICBAND_MAX_ACTIVE_JOBS", "0"),
        ("CIVICBAND_DB_POOL_SIZE", "many"),
        ("CIVICBAND_VERIFY_MAX_MISSING_RATIO", "-0.5"),
        ("CIVICBAND_PROGRESS_INTERVAL", "soon"),
        ("CIVICBAND_LEASE_CHECK_INTERVAL", "0"),
        ("CIVICBAND_DIGEST_SPLIT_ROWS", "1e9x"),
        ("CIVICBAND_BATCH_SIZE", "5000"),
        ("CIVICBAND_SITE_URL", "https://civic.band/"),
        ("CIVICBAND_BACKOFF_MAX", "0.01"),
        ("JSONRPC_PORT", "many"),
    ],
)
def test_bad_settings_exit_2_with_one_line_naming_them(database_url, source_ds10, name, value):
    result = crawl(database_url, source_ds10, "subdomain=oakland.ca", settings={name: value})
    assert result.returncode == 2, result
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith(f"civicband: error: {name}"), result.stderr
    assert "Traceback" not in result.stderr
    assert source_ds10.requests() == []
