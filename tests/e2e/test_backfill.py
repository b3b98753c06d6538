"""End to end: the real crawl command against real Datasette sites and a real PostgreSQL."""

from __future__ import annotations

import pytest

from tests.e2e.crawl import SECRET, crawl, expected, fetch, jobs, mirrored

TABLES = {"agenda": "agendas", "minutes": "minutes"}


def assert_mirror_equals_source(database_url, site, document_types=("agenda", "minutes")):
    for document_type in document_types:
        source_rows = expected(site, TABLES[document_type])
        assert source_rows, "a comparison of nothing proves nothing"
        assert mirrored(database_url, site.subdomain, document_type) == source_rows


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
        assert_mirror_equals_source(database_url, site, ("agenda",))
        if site.rows("minutes"):
            assert_mirror_equals_source(database_url, site, ("minutes",))
        for job in jobs(database_url, site.subdomain):
            total = len(site.rows(TABLES[job["document_type"]]))
            assert job["status"] == "completed", job
            assert (job["pages_fetched"], job["pages_created"], job["pages_updated"]) == (
                total,
                total,
                0,
            )
            assert job["errors_encountered"] == 0 and job["last_error"] is None
            assert (job["verify_status"], job["expected_count"], job["actual_count"]) == (
                "passed",
                total,
                total,
            )
    assert len(jobs(database_url)) == 6
    stats = result.stats
    assert stats["civicband/rows/created"] == sum(
        len(site.rows(t)) for site in sites for t in TABLES.values()
    )
    assert stats["civicband/exit_code"] == 0
    # Honest user agent, the secret sent as a header and never logged.
    requests = [r for r in source.requests() if "/meetings" in r["path"]]
    assert requests
    assert all(r["headers"]["user-agent"].startswith("civicband/") for r in requests)
    assert all(r["headers"].get("x-service-secret") == SECRET for r in requests)
    pages = [r for r in requests if "sql=" not in r["query"]]
    counts = [r for r in requests if "sql=" in r["query"]]
    assert all("_sort=id" in r["query"] for r in pages)
    assert len([r for r in counts if r["status"] == 200]) == 6  # one count per job
    assert SECRET not in result.stderr + result.stdout


def test_rerun_counts_every_row_as_updated_and_duplicates_nothing(database_url, source):
    site = source.create_site(agendas=120, minutes=33)
    assert crawl(database_url, source, f"subdomain={site.subdomain}").returncode == 0
    before = fetch(database_url, "SELECT count(*) AS n FROM meeting_pages")[0]["n"]
    result = crawl(database_url, source, f"subdomain={site.subdomain}", "batch_size=40")
    assert result.returncode == 0, result
    assert fetch(database_url, "SELECT count(*) AS n FROM meeting_pages")[0]["n"] == before == 153
    second = [job for job in jobs(database_url) if job["id"] > 2]
    assert sorted((j["pages_created"], j["pages_updated"]) for j in second) == [(0, 33), (0, 120)]
    assert result.stats["civicband/rows/changed"] == 0
    assert_mirror_equals_source(database_url, site)


def test_hostile_rows_are_quarantined_and_the_rest_stored(database_url, source):
    good = source.create_site(agendas=30, minutes=0)
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
    stored = mirrored(database_url, site.subdomain, "agenda")
    assert len(stored) == 30 + 3
    assert stored["aaaaaaaaaaa4"]["text"] == "nulinside"
    assert stored["aaaaaaaaaaa4"]["meeting"] == "Council"
    assert stored["aaaaaaaaaaa5"]["entities_json"] == "{broken"
    assert stored["aaaaaaaaaaa5"]["votes_json"] == "[1,"
    assert "123456789012" in stored
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
    assert job["status"] == "completed"
    assert job["errors_encountered"] == 4
    assert job["pages_fetched"] == 37 and job["pages_created"] == 33
    stats = result.stats
    assert stats["civicband/rows/nul_removed"] == 3
    assert stats["civicband/rows/rejected"] == 4
    # A re-crawl meets the same bad rows again: still four rejections, not eight.
    assert crawl(database_url, source, f"subdomain={site.subdomain}").returncode == 0
    assert fetch(database_url, "SELECT count(*) AS n FROM rejected_rows")[0]["n"] == 4


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


def test_page_whose_meeting_changed_moves_to_its_new_document(database_url, source):
    site = source.create_site(agendas=12, minutes=0)
    assert crawl(database_url, source, f"subdomain={site.subdomain}").returncode == 0
    rows = site.rows("agendas")
    lonely = {**rows[0], "meeting": "Special Session", "date": "1999-12-31"}
    site.rebuild(agendas=[lonely, *rows[1:]], minutes=[])
    assert crawl(database_url, source, f"subdomain={site.subdomain}").returncode == 0
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


def test_new_site_joins_municipalities_and_all_crawls_every_one(database_url, source):
    first = source.create_site(agendas=5, minutes=4)
    second = source.create_site(agendas=3, minutes=2)
    for site in (first, second):
        assert crawl(database_url, source, f"subdomain={site.subdomain}").returncode == 0
    known = fetch(database_url, "SELECT subdomain FROM municipalities ORDER BY 1")
    assert [r["subdomain"] for r in known] == sorted([first.subdomain, second.subdomain])
    result = crawl(database_url, source, "subdomain=all")
    assert result.returncode == 0, result
    assert len(jobs(database_url)) == 8
    assert result.stats["civicband/rows/updated"] == 14


def test_unknown_site_fails_at_once_and_is_not_added(database_url, source):
    result = crawl(database_url, source, "subdomain=nowhere.zz")
    assert result.returncode == 1, result
    assert "unknown site" in result.stderr
    assert fetch(database_url, "SELECT count(*) AS n FROM municipalities")[0]["n"] == 0
    tries = [r for r in source.requests() if r["path"].startswith("/nowhere.zz/")]
    assert len(tries) == 2  # one per table, no retries


def test_html_at_200_is_an_error_not_an_empty_page(database_url, source):
    site = source.create_site(agendas=120, minutes=0)
    assert crawl(database_url, source, f"subdomain={site.subdomain}").returncode == 0
    site.add_rows("agendas", source_rows := [{**site.rows("agendas")[0], "id": "ffffffffffff"}])
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
        settings={"RETRY_TIMES": 2},
    )
    assert result.returncode == 1, result
    job = jobs(database_url, site.subdomain)[-1]
    assert job["status"] == "failed"
    assert "HTML" in job["last_error"] and site.subdomain in job["last_error"]
    assert job["pages_fetched"] == 50 and job["last_cursor"] is not None
    assert job["retry_count"] == 1
    assert "ffffffffffff" not in mirrored(database_url, site.subdomain, "agenda")
    assert source_rows
    paged = [r for r in source.requests() if "_next=" in r["query"]]
    assert len(paged) == 3  # the first try and RETRY_TIMES retries


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
    assert_mirror_equals_source(database_url, site, ("agenda",))
    assert result.stats["retry/count"] == 1


def test_other_4xx_fails_the_job_with_status_and_url(database_url, source):
    site = source.create_site(agendas=25, minutes=10)
    assert crawl(database_url, source, f"subdomain={site.subdomain}").returncode == 0
    source.faults.add(match=f"/{site.subdomain}/meetings/minutes", action="status", status=403)
    result = crawl(database_url, source, f"subdomain={site.subdomain}")
    assert result.returncode == 1, result
    by_type = {job["document_type"]: job for job in jobs(database_url, site.subdomain)[2:]}
    assert by_type["agenda"]["status"] == "completed"
    assert by_type["minutes"]["status"] == "failed"
    assert "HTTP 403" in by_type["minutes"]["last_error"]
    assert f"/{site.subdomain}/meetings/minutes.json" in by_type["minutes"]["last_error"]


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["subdomain=oakland.ca", "document_type=agendas"], "document_type"),
        (["subdomain=https://evil.example/x"], "subdomain"),
        (["subdomain=oakland.ca/../../x"], "subdomain"),
        (["subdomain=oakland.ca", "batch_size=0"], "batch_size"),
        (["subdomain=oakland.ca", "batch_size=1001"], "batch_size"),
        (["subdomain=oakland.ca", "resume=perhaps"], "resume"),
        ([], "subdomain"),
    ],
)
def test_bad_arguments_exit_2_with_one_line_and_fetch_nothing(database_url, source, args, named):
    result = crawl(database_url, source, *args)
    assert result.returncode == 2, result
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and f"{named}:" in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert source.requests() == []


def test_all_with_empty_municipalities_exits_2(database_url, source):
    result = crawl(database_url, source, "subdomain=all")
    assert result.returncode == 2, result
    assert "municipalities table is empty" in result.stderr
    assert "Traceback" not in result.stderr
    assert source.requests() == []


def test_unreachable_database_exits_2_without_the_password(source):
    site = source.create_site(agendas=3, minutes=0)
    url = "postgresql://mirror:hunter2@127.0.0.1:9/civicband"
    result = crawl(url, source, f"subdomain={site.subdomain}")
    assert result.returncode == 2, result
    assert "hunter2" not in result.stderr
    assert "mirror:***@127.0.0.1:9" in result.stderr
    assert "Traceback" not in result.stderr
    assert source.requests() == []
