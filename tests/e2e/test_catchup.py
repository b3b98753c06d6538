"""Catch-up: a copy that exists is brought up to date at the cost of what changed, safely.

Sites are rebuilt under the mirror's feet, caught mid-rebuild, served by a Datasette with a
small max_returned_rows, and faulted; every scenario ends with the mirror equal to the
source in every column, nothing present deleted, and the counters exact.
"""

from __future__ import annotations

import random
import signal

import pytest

from civicband.settings import URLLENGTH_LIMIT
from tests.e2e.crawl import (
    assert_mirror_equals_source,
    backfilled,
    change_in_place,
    committed,
    crawl,
    fetch,
    is_by_id,
    is_digest,
    is_listing,
    jobs,
    mirrored,
    page_requests,
    register,
    sql_requests,
    start_crawl,
    wait_for,
)
from tests.lookalike import data


def sent_bytes(requests) -> int:
    return sum(r["bytes"] or 0 for r in requests)


def test_added_removed_and_changed_pages_are_caught_up_at_a_fraction_of_a_pass(
    database_url, source
):
    changed_site = source.create_site(agendas=2000, minutes=300)
    untouched = source.create_site(agendas=400, minutes=100)
    register(database_url, changed_site, untouched)
    full = crawl(database_url, source, f"subdomain={changed_site.subdomain},{untouched.subdomain}")
    assert full.returncode == 0, full
    full_pass = sent_bytes(
        r for r in source.requests() if r["path"].startswith(f"/{changed_site.subdomain}/")
    )
    source.clear_requests()
    ids = sorted(changed_site.ids("agendas"))
    changed_site.delete_rows("agendas", ids[:10])
    changed_site.add_rows("agendas", changed_site.new_rows("agendas", 12, seed="new pages"))
    change_in_place(
        changed_site, "agendas", ids[500:505], entities_json='{"persons": ["Re-extracted"]}'
    )
    voted = sorted(r["id"] for r in changed_site.rows("minutes") if r["votes_json"] is not None)
    change_in_place(changed_site, "minutes", voted[:3], votes_json=None)
    result = crawl(
        database_url, source, f"subdomain={changed_site.subdomain},{untouched.subdomain}"
    )
    assert result.returncode == 0, result
    for site in (changed_site, untouched):
        assert_mirror_equals_source(database_url, site)
    latest = {(j["subdomain"], j["document_type"]): j for j in jobs(database_url)}
    agenda = latest[(changed_site.subdomain, "agenda")]
    assert (agenda["mode"], agenda["verify_status"]) == ("catchup", "passed")
    assert (agenda["pages_created"], agenda["pages_updated"], agenda["pages_removed"]) == (
        12,
        5,
        10,
    )
    minutes = latest[(changed_site.subdomain, "minutes")]
    assert (minutes["pages_created"], minutes["pages_updated"], minutes["pages_removed"]) == (
        0,
        3,
        0,
    )
    assert page_requests(source) == [], "a catch-up pages through nothing"
    quiet = [r for r in source.requests() if r["path"].startswith(f"/{untouched.subdomain}/")]
    assert len(quiet) == 1 and is_digest(quiet[0]), quiet  # both tables in one answer
    moved = sent_bytes(
        r for r in source.requests() if r["path"].startswith(f"/{changed_site.subdomain}/")
    )
    assert moved < 0.15 * full_pass, (moved, full_pass)


def test_a_catch_up_under_faults_is_retried_and_exact(database_url, source):
    site = backfilled(database_url, source, agendas=600, minutes=0)
    site.delete_rows("agendas", sorted(site.ids("agendas"))[:20])
    site.add_rows("agendas", site.new_rows("agendas", 150, seed="faults"))
    source.faults.add(match="group\\+by\\+tag,bucket", action="status", status=503, times=1)
    source.faults.add(match=r"as\+packed", action="html", times=1)
    source.faults.add(match=r"_[wv]=", action="truncate", times=1)
    result = crawl(
        database_url,
        source,
        f"subdomain={site.subdomain}",
        "document_type=agenda",
        settings={"RETRY_TIMES": 2},
    )
    assert result.returncode == 0, result
    assert result.stats["retry/count"] == 3
    assert_mirror_equals_source(database_url, site, ("agenda",))
    job = jobs(database_url, site.subdomain)[-1]
    assert (job["mode"], job["verify_status"], job["pages_created"], job["pages_removed"]) == (
        "catchup",
        "passed",
        150,
        20,
    )


@pytest.mark.datasette("ds10")
def test_a_catch_up_killed_at_random_moments_then_resumed_is_exact(database_url, source, tmp_path):
    site = backfilled(database_url, source, agendas=800, minutes=0)
    site.add_rows("agendas", site.new_rows("agendas", 900, seed="kill"))
    source.faults.add(match=r"_[wv]=", action="hang", seconds=0.3, times=-1)
    rng = random.Random(11)
    args = (f"subdomain={site.subdomain}", "document_type=agenda", "repair=true", "resume=true")
    for attempt in range(2):
        created = created_so_far(database_url, site.subdomain)
        process = start_crawl(database_url, source, *args, log=tmp_path / f"kill{attempt}.log")
        target = created + rng.randint(50, 200)
        wait_for(
            lambda p=process, t=target: (
                created_so_far(database_url, site.subdomain) >= t or p.process.poll() is not None
            ),
            what="rows to be stored",
        )
        process.process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    source.faults.clear()
    result = crawl(database_url, source, *args)
    assert result.returncode == 0, result
    assert_mirror_equals_source(database_url, site, ("agenda",))
    job = jobs(database_url, site.subdomain)[-1]
    assert (job["status"], job["verify_status"]) == ("completed", "passed")
    # Over three attempts (one job resumed, or a new one once an attempt finished before its
    # kill: 537 ids go in one request), each row created once.
    assert created_so_far(database_url, site.subdomain) == 900
    assert fetch(database_url, "SELECT count(*) AS n FROM meeting_pages")[0]["n"] == 1700


def created_so_far(database_url: str, subdomain: str) -> int:
    rows = fetch(
        database_url,
        "SELECT coalesce(sum(pages_created), 0) AS n FROM backfill_jobs WHERE subdomain = %s"
        " AND mode = 'catchup'",
        [subdomain],
    )
    return rows[0]["n"]


def test_a_site_caught_mid_rebuild_is_not_swept_then_comes_back_whole(database_url, source):
    site = backfilled(database_url, source, agendas=500, minutes=0)
    whole = site.rows("agendas")
    partial = whole[:60] + site.new_rows("agendas", 20, seed="rebuilding")
    site.rebuild(agendas=partial, minutes=[])
    result = crawl(
        database_url, source, f"subdomain={site.subdomain}", "document_type=agenda", "full=true"
    )
    assert result.returncode == 1, result
    job = jobs(database_url, site.subdomain)[-1]
    assert (job["status"], job["verify_status"]) == ("failed", "failed")
    assert job["last_error"].startswith("Refusing to remove 440 of 520 pages")
    assert "allow_shrink=true" in job["last_error"]
    assert result.stats["civicband/shrink/refused"] == 1
    stored = mirrored(database_url, site.subdomain, "agenda")
    assert {row["id"] for row in whole} <= set(stored), "a page was deleted on a partial view"
    # The site is whole again: the next run (a catch-up of the copy that exists) is exact.
    site.rebuild(agendas=whole, minutes=[])
    again = crawl(database_url, source, f"subdomain={site.subdomain}", "document_type=agenda")
    assert again.returncode == 0, again
    assert_mirror_equals_source(database_url, site, ("agenda",))
    last = jobs(database_url, site.subdomain)[-1]
    assert (last["mode"], last["verify_status"], last["pages_removed"]) == ("catchup", "passed", 20)


def test_a_catch_up_meets_the_shrink_guard_and_allow_shrink_accepts_it(database_url, source):
    site = backfilled(database_url, source, agendas=300, minutes=0)
    kept = site.rows("agendas")[:100]
    site.rebuild(agendas=kept, minutes=[])
    refused = crawl(database_url, source, f"subdomain={site.subdomain}", "document_type=agenda")
    assert refused.returncode == 1, refused
    assert jobs(database_url, site.subdomain)[-1]["last_error"].startswith(
        "Refusing to remove 200 of 300 pages"
    )
    assert len(mirrored(database_url, site.subdomain, "agenda")) == 300
    accepted = crawl(
        database_url,
        source,
        f"subdomain={site.subdomain}",
        "document_type=agenda",
        "allow_shrink=true",
    )
    assert accepted.returncode == 0, accepted
    assert_mirror_equals_source(database_url, site, ("agenda",))
    assert jobs(database_url, site.subdomain)[-1]["pages_removed"] == 200


@pytest.mark.datasette("ds10")  # a setting of the guard; the guard on both lines: above
def test_the_shrink_guard_is_a_setting(database_url, source):
    site = backfilled(database_url, source, agendas=100, minutes=0)
    site.rebuild(agendas=site.rows("agendas")[:80], minutes=[])
    # One copy, two runs: a guard of 0.9 refuses to remove 20 of 100 pages (and removes
    # nothing), then a guard of 0 lets the same catch-up through.
    for guard in ("0.9", "0"):
        result = crawl(
            database_url,
            source,
            f"subdomain={site.subdomain}",
            "document_type=agenda",
            settings={"CIVICBAND_SHRINK_GUARD": guard},
        )
        if guard == "0":
            assert result.returncode == 0, result
            assert_mirror_equals_source(database_url, site, ("agenda",))
        else:
            assert result.returncode == 1, result
            assert len(mirrored(database_url, site.subdomain, "agenda")) == 100


def test_a_small_max_returned_rows_never_makes_an_answer_look_complete(database_url, source):
    site = source.create_site(agendas=1500, minutes=0, settings={"max_returned_rows": 50})
    register(database_url, site)
    first = crawl(database_url, source, f"subdomain={site.subdomain}", "document_type=agenda")
    assert first.returncode == 0, first
    assert "accepts pages of at most 50 rows" in first.stderr
    assert_mirror_equals_source(database_url, site, ("agenda",))
    gone = sorted(site.ids("agendas"))[::30]
    site.delete_rows("agendas", gone)
    site.add_rows("agendas", site.new_rows("agendas", 70, seed="small answers"))
    result = crawl(
        database_url, source, f"subdomain={site.subdomain}", "document_type=agenda", "repair=true"
    )
    assert result.returncode == 0, result
    assert_mirror_equals_source(database_url, site, ("agenda",))
    job = jobs(database_url, site.subdomain)[-1]
    assert (job["verify_status"], job["pages_created"], job["pages_removed"]) == (
        "passed",
        70,
        len(gone),
    )
    assert result.stats["civicband/digest/splits"] >= 1  # 257 buckets do not fit 50 rows
    listings = [r for r in sql_requests(source) if is_listing(r)]
    assert len(listings) > 1  # answers cut at 50 rows were continued, not taken as complete


@pytest.mark.parametrize("how", ["catch-up", "full=true"])
def test_a_rejection_fixed_at_the_source_is_swept(database_url, source, how):
    rows = data.make_rows("agendas", 40, seed="fixed")
    broken = {**rows[0], "id": "aaaaaaaaaaa1", "date": "2024-02-30"}
    site = source.create_site(agendas=[*rows[1:], broken], minutes=0)
    register(database_url, site)
    assert crawl(database_url, source, f"subdomain={site.subdomain}").returncode == 0
    assert [r["row_id"] for r in fetch(database_url, "SELECT row_id FROM rejected_rows")] == [
        "aaaaaaaaaaa1"
    ]
    # The source re-processed the row: a valid date now, so a new id.
    site.delete_rows("agendas", ["aaaaaaaaaaa1"])
    site.add_rows("agendas", [rows[0]])
    mode = ["full=true"] if how == "full=true" else []
    result = crawl(
        database_url, source, f"subdomain={site.subdomain}", "document_type=agenda", *mode
    )
    assert result.returncode == 0, result
    assert fetch(database_url, "SELECT count(*) AS n FROM rejected_rows")[0]["n"] == 0
    job = jobs(database_url, site.subdomain)[-1]
    assert (job["verify_status"], job["rejected_count"]) == ("passed", 0)
    assert result.stats["civicband/rows/unrejected"] == 1
    assert_mirror_equals_source(database_url, site, ("agenda",))


def test_a_page_that_turns_malformed_is_rejected_instead_then_stored_again(database_url, source):
    site = backfilled(database_url, source, agendas=40, minutes=0)
    good = sorted(site.rows("agendas"), key=lambda r: r["id"])[5]
    # Re-extraction at the source under the same id: new entities, and the meeting lost.
    change_in_place(site, "agendas", [good["id"]], meeting="", entities_json='{"persons": []}')
    broken = crawl(database_url, source, f"subdomain={site.subdomain}", "document_type=agenda")
    assert broken.returncode == 0, broken  # a rejected row is counted, not a failure
    job = jobs(database_url, site.subdomain)[-1]
    assert (job["mode"], job["verify_status"], job["actual_count"], job["rejected_count"]) == (
        "catchup",
        "passed",
        39,
        1,
    )
    # The stale page is not kept beside its rejection: one id, one state.
    assert good["id"] not in mirrored(database_url, site.subdomain, "agenda")
    assert (job["pages_removed"], broken.stats["civicband/pages/replaced_by_rejection"]) == (1, 1)
    # Its values were asked for first; its meeting moved, so it was fetched again whole.
    assert broken.stats["civicband/catchup/refetched_whole"] == 1
    assert [r["row_id"] for r in fetch(database_url, "SELECT row_id FROM rejected_rows")] == [
        good["id"]
    ]
    assert_mirror_equals_source(database_url, site, ("agenda",))
    # Re-extracted again, the meeting back, still the same id: stored, and rejected no more.
    change_in_place(site, "agendas", [good["id"]], meeting=good["meeting"], votes_json="[]")
    fixed = crawl(database_url, source, f"subdomain={site.subdomain}", "document_type=agenda")
    assert fixed.returncode == 0, fixed
    job = jobs(database_url, site.subdomain)[-1]
    assert (job["verify_status"], job["actual_count"], job["rejected_count"]) == ("passed", 40, 0)
    assert fetch(database_url, "SELECT count(*) AS n FROM rejected_rows")[0]["n"] == 0
    assert fixed.stats["civicband/rows/unrejected"] == 1
    assert_mirror_equals_source(database_url, site, ("agenda",))


def test_hostile_ids_shared_across_sites_agree_on_both_sides(database_url, source):
    base = data.make_rows("agendas", 30, seed="ids")
    odd = [
        {**base[0], "id": "ABCDEF012345"},  # upper case
        {**base[1], "id": "abc"},  # short
        {**base[2], "id": "123456789012"},  # all digits
        {**base[3], "id": "0000000000000"},  # 13 digits
        {**base[4], "id": "ab\x00cdef01234"},  # NUL: rejected, counted all the same
        {**base[5], "id": ""},  # empty: rejected
    ]
    nulls = [{**base[6], "id": None}]  # keyset paging serves it only on the first page
    first = source.create_site(agendas=nulls + odd + base[7:], minutes=0)
    second = source.create_site(agendas=odd + base[7:20], minutes=0)
    register(database_url, first, second)
    result = crawl(
        database_url,
        source,
        f"subdomain={first.subdomain},{second.subdomain}",
        "document_type=agenda",
    )
    assert result.returncode == 0, result
    assert [j["verify_status"] for j in jobs(database_url)] == ["passed", "passed"]
    for site in (first, second):
        assert_mirror_equals_source(database_url, site, ("agenda",))
    source.clear_requests()
    again = crawl(
        database_url,
        source,
        f"subdomain={first.subdomain},{second.subdomain}",
        "document_type=agenda",
    )
    assert again.returncode == 0, again
    assert [j["verify_status"] for j in jobs(database_url)[2:]] == ["passed", "passed"]
    assert len(source.requests()) == 2  # equal digests: one request a site


def test_a_null_id_past_the_first_page_is_missed_by_paging_and_found_by_catch_up(
    database_url, source
):
    rows = data.make_rows("agendas", 30, seed="late null")
    nulls = [{**rows[0], "id": None, "page": 90 + i} for i in range(3)]
    site = source.create_site(agendas=nulls + rows[1:], minutes=0)
    register(database_url, site)
    within = {"CIVICBAND_VERIFY_MAX_MISSING_RATIO": 0.1}  # 1 of 32 missing: a warning
    paged = crawl(
        database_url,
        source,
        f"subdomain={site.subdomain}",
        "document_type=agenda",
        "batch_size=2",
        settings=within,
    )
    assert paged.returncode == 0, paged
    job = jobs(database_url, site.subdomain)[-1]
    assert (job["verify_status"], job["missing_count"]) == ("warned", 1)
    caught = crawl(database_url, source, f"subdomain={site.subdomain}", "document_type=agenda")
    assert caught.returncode == 0, caught
    job = jobs(database_url, site.subdomain)[-1]
    assert (job["mode"], job["verify_status"], job["rejected_count"]) == ("catchup", "passed", 3)


def test_by_id_batches_are_sized_to_the_url_limit(database_url, source):
    site = backfilled(database_url, source, agendas=200, minutes=0)
    site.add_rows("agendas", site.new_rows("agendas", 1200, seed="url limit"))
    source.clear_requests()
    result = crawl(
        database_url, source, f"subdomain={site.subdomain}", "document_type=agenda", "repair=true"
    )
    assert result.returncode == 0, result
    sent = sql_requests(source)
    urls = [f"{source.base_url}{r['path']}?{r['query']}" for r in sent]
    assert all(len(u) <= URLLENGTH_LIMIT for u in urls), max(len(u) for u in urls)
    by_id = [r for r in sent if is_by_id(r)]
    assert len(by_id) >= 3  # 1200 ids do not fit one URL
    assert_mirror_equals_source(database_url, site, ("agenda",))


@pytest.mark.datasette("ds10")  # the choice is arithmetic on counts; paging on 0.65: elsewhere
def test_a_catch_up_that_costs_more_than_a_pass_pages_instead(database_url, source):
    # Every page re-OCR'd: 4000 new ids take 8 requests by id (537 a URL), pages 4 (and the
    # digest and count): the cost model says page.
    site = backfilled(database_url, source, agendas=4000, minutes=0)
    site.rebuild(agendas=data.make_rows("agendas", 4000, seed="all new"), minutes=[])
    result = crawl(
        database_url,
        source,
        f"subdomain={site.subdomain}",
        "document_type=agenda",
        "allow_shrink=true",
    )
    assert result.returncode == 0, result
    assert result.stats["civicband/catchup/full_passes"] == 1
    assert page_requests(source, site.subdomain)
    assert_mirror_equals_source(database_url, site, ("agenda",))
    job = jobs(database_url, site.subdomain)[-1]
    assert (job["mode"], job["verify_status"], job["pages_removed"]) == ("full", "passed", 4000)
    assert committed(database_url, site.subdomain) >= 1


def test_a_pre_split_range_that_hits_the_time_limit_is_split_again(database_url, source):
    site = backfilled(database_url, source, agendas=300, minutes=0)
    site.add_rows("agendas", site.new_rows("agendas", 30, seed="split again"))
    # The table is above the split size, so its digest is taken in 16 ranges; the one from
    # "8" to "9" hits the time limit every time: only its 16 parts can answer.
    source.faults.add(match=r"group\+by\+tag,bucket.*&low=8&high=9", action="interrupted", times=-1)
    source.clear_requests()
    result = crawl(
        database_url,
        source,
        f"subdomain={site.subdomain}",
        "document_type=agenda",
        settings={"CIVICBAND_DIGEST_SPLIT_ROWS": 100},
    )
    assert result.returncode == 0, result
    assert_mirror_equals_source(database_url, site, ("agenda",))
    assert result.stats["civicband/digest/splits"] >= 1
    assert jobs(database_url, site.subdomain)[-1]["verify_status"] == "passed"
    digests = [r for r in sql_requests(source) if is_digest(r)]
    assert len([r for r in digests if "&low=81&high=82&" in r["query"]]) >= 1, digests


@pytest.mark.datasette("ds10")
def test_a_site_caught_mid_rebuild_between_digest_and_listing_loses_nothing(
    database_url, source, tmp_path
):
    site = backfilled(database_url, source, agendas=2000, minutes=0)
    rows = site.rows("agendas")
    changed = [
        {**r, "entities_json": '{"persons": ["New"]}'} if i % 20 == 0 else r
        for i, r in enumerate(rows)
    ]
    site.rebuild(agendas=changed, minutes=[])  # 5 % re-extracted: most buckets differ
    source.clear_requests()
    # The listing waits at the server while the site is caught mid-rebuild (40 % of its rows).
    source.faults.add(match=r"as\+packed", action="hang", seconds=4, times=1)
    running = start_crawl(
        database_url,
        source,
        f"subdomain={site.subdomain}",
        "document_type=agenda",
        log=tmp_path / "catch-up.log",
    )
    wait_for(lambda: any(r.get("fault") == "hang" for r in source.requests()), what="the listing")
    site.rebuild(agendas=changed[:800], minutes=[])
    (listing,) = [r for r in source.requests() if r.get("fault") == "hang"]
    assert listing["done"] is None, "the listing was answered before the rebuild was over"
    assert running.wait(timeout=120) == 1, running
    assert "the source changed during the catch-up" in running.output()
    assert running.stats.get("civicband/catchup/deleted", 0) == 0
    site.rebuild(agendas=changed, minutes=[])  # the rebuild is over: the next run is exact
    assert len(mirrored(database_url, site.subdomain, "agenda")) == len(rows)
    again = crawl(database_url, source, f"subdomain={site.subdomain}", "document_type=agenda")
    assert again.returncode == 0, again
    assert_mirror_equals_source(database_url, site, ("agenda",))
