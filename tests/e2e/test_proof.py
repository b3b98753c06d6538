"""`passed` means equal: the holes a demanding operator found in the proof, each closed.

A site that gains columns, a `next` that ends early, a site that loses half its pages, rows
that are identical twins: every scenario ends with the mirror equal to the source or a verdict
that says it is not, and no page the source still has is removed.
"""

from __future__ import annotations

import json

import pytest

from tests.e2e.crawl import (
    assert_mirror_equals_source,
    crawl,
    fetch,
    jobs,
    mirrored,
    register,
)
from tests.e2e.test_catchup import change_in_place
from tests.lookalike import data


def test_a_site_that_gains_columns_never_passes_until_they_are_mirrored(database_url, source):
    agendas = data.make_rows("agendas", 300, seed="gains-columns")
    site = source.create_site(agendas=agendas, minutes=0, legacy=True)
    register(database_url, site)
    args = (f"subdomain={site.subdomain}", "document_type=agenda")
    first = crawl(database_url, source, *args)
    assert first.returncode == 0, first
    assert jobs(database_url, site.subdomain)[-1]["verify_status"] == "passed"
    # Its next rebuild has all eight columns: the same pages, now with entities and votes.
    site.rebuild(agendas, 0)
    assert any(row["votes_json"] for row in site.rows("agendas"))

    checked = crawl(database_url, source, *args, "verify_only=true")
    verdict = jobs(database_url, site.subdomain)[-1]
    assert verdict["verify_status"] != "passed", checked
    assert verdict["stale_count"] > 0, verdict

    caught_up = crawl(database_url, source, *args)
    assert caught_up.returncode == 0, caught_up
    job = jobs(database_url, site.subdomain)[-1]
    assert job["verify_status"] == "passed", job  # most rows changed: a full pass, by cost
    assert_mirror_equals_source(database_url, site, ("agenda",))


def test_a_next_that_ends_early_removes_no_page_the_source_has(database_url, source):
    agendas = data.make_rows("agendas", 500, seed="ends-early")
    site = source.create_site(agendas=agendas, minutes=0)
    register(database_url, site)
    args = (f"subdomain={site.subdomain}", "document_type=agenda", "batch_size=50")
    assert crawl(database_url, source, *args).returncode == 0
    ids = sorted(row["id"] for row in agendas)
    # The full pass's seventh page says it is the last, while 150 rows follow: it sees 70 %,
    # more than the shrink guard's share, and the source's digest still counts them all.
    source.faults.add(match=f"_next={ids[299]}", action="rewrite_next", value=None, times=1)
    result = crawl(database_url, source, *args, "full=true")
    assert result.returncode == 0, result
    assert set(mirrored(database_url, site.subdomain, "agenda")) == set(ids), "a page was removed"
    job = jobs(database_url, site.subdomain)[-1]
    assert (job["pages_fetched"], job["pages_removed"]) == (350, 0), job
    assert job["verify_status"] == "passed"  # the mirror holds what the source holds
    assert_mirror_equals_source(database_url, site, ("agenda",))


@pytest.mark.parametrize("mode", ["catch-up", "full=true"])
def test_a_large_removal_within_the_guard_is_warned(database_url, source, mode):
    agendas = data.make_rows("agendas", 400, seed="loses-45")
    site = source.create_site(agendas=agendas, minutes=0)
    register(database_url, site)
    args = (f"subdomain={site.subdomain}", "document_type=agenda")
    assert crawl(database_url, source, *args).returncode == 0
    site.rebuild(agendas[:220], 0)  # 55 % of its pages: within the guard (0.5)
    result = crawl(database_url, source, *args, *([mode] if "=" in mode else []))
    assert result.returncode == 0, result
    assert_mirror_equals_source(database_url, site, ("agenda",))
    assert jobs(database_url, site.subdomain)[-1]["pages_removed"] == 180
    assert result.stats["civicband/removals/large"] == 1
    (line,) = result.lines(r"removed 180 of 400 pages \(45 %\) that the source no longer has")
    assert "WARNING" in line and "CIVICBAND_REMOVAL_WARN_RATIO (0.1)" in line


def test_identical_rows_without_ids_are_a_faithful_copy_that_passes(database_url, source):
    agendas = data.make_rows("agendas", 60, seed="null-twins")
    twin = {**agendas[0], "id": None, "text": "a page without an id, served twice"}
    site = source.create_site(agendas=[twin, dict(twin), *agendas[1:]], minutes=0)
    register(database_url, site)
    args = (f"subdomain={site.subdomain}", "document_type=agenda")
    first = crawl(database_url, source, *args)
    assert first.returncode == 0, first
    (rejection,) = fetch(database_url, "SELECT row_id, copies FROM rejected_rows")
    assert rejection == {"row_id": None, "copies": 2}
    for run in (first, crawl(database_url, source, *args)):
        assert run.returncode == 0, run
    assert [j["verify_status"] for j in jobs(database_url, site.subdomain)] == ["passed"] * 2


@pytest.mark.parametrize("mode", ["full=true", "repair=true"])
def test_a_rebuild_whose_rows_the_mirror_must_reject_removes_no_page(database_url, source, mode):
    agendas = data.make_rows("agendas", 200, seed="unstorable")
    site = source.create_site(agendas=agendas, minutes=0)
    register(database_url, site)
    args = (f"subdomain={site.subdomain}", "document_type=agenda")
    assert crawl(database_url, source, *args).returncode == 0
    # Rebuilt with dates the mirror cannot store: new ids, as many rows, every one rejected.
    broken = []
    for row in agendas:
        date = "{1}/{2}/{0}".format(*row["date"].split("-"))
        new_id = data.row_id("agendas", row["meeting"], date, row["page"], row["text"])
        broken.append({**row, "date": date, "id": new_id})
    site.rebuild(broken, 0)
    result = crawl(database_url, source, *args, mode)
    assert result.returncode == 1, result
    job = jobs(database_url, site.subdomain)[-1]
    assert job["last_error"].startswith("Refusing to remove 200 of 200 pages"), job
    assert result.stats["civicband/shrink/refused"] == 1
    assert len(mirrored(database_url, site.subdomain, "agenda")) == 200


def clerk_votes(ayes: int, nays: int, names: tuple[str, ...]) -> str:
    """votes_json as clerk writes it: one motion, its tally and each member's vote."""
    members = [{"name": n, "vote": "aye" if i < ayes else "nay"} for i, n in enumerate(names)]
    vote = {
        "motion_by": names[0],
        "seconded_by": names[1],
        "result": "passed",
        "tally": {"ayes": ayes, "nays": nays, "abstain": None, "absent": None},
        "individual_votes": members,
        "raw_text": f"Motion carried {ayes}-{nays}.",
    }
    return json.dumps({"votes": [vote]})


MEMBERS = ("Park", "Ward", "Lee", "Diaz", "Chen", "Moss", "Kahn")


def test_a_vote_corrected_at_the_same_length_is_caught_up_never_passed(database_url, source):
    agendas = data.make_rows("agendas", 300, seed="corrected-votes")
    for row in agendas[:10]:
        row["votes_json"] = clerk_votes(7, 0, MEMBERS)
    site = source.create_site(agendas=agendas, minutes=0)
    register(database_url, site)
    args = (f"subdomain={site.subdomain}", "document_type=agenda")
    assert crawl(database_url, source, *args).returncode == 0
    # clerk re-extracts: 7-0 was 6-1, every length the same.
    corrected = clerk_votes(6, 1, MEMBERS)
    assert len(corrected) == len(agendas[0]["votes_json"])
    change_in_place(site, "agendas", [row["id"] for row in agendas[:10]], votes_json=corrected)

    crawl(database_url, source, *args, "verify_only=true")
    checked = jobs(database_url, site.subdomain)[-1]
    assert (checked["verify_status"], checked["stale_count"]) == ("failed", 10), checked

    caught_up = crawl(database_url, source, *args)
    assert caught_up.returncode == 0, caught_up
    job = jobs(database_url, site.subdomain)[-1]
    assert (job["mode"], job["verify_status"], job["pages_updated"]) == ("catchup", "passed", 10)
    assert_mirror_equals_source(database_url, site, ("agenda",))


def test_two_rows_of_one_bucket_exchanging_votes_are_caught_up(database_url, source):
    agendas = data.make_rows("agendas", 600, seed="exchange")
    by_bucket: dict[str, list[dict]] = {}
    for row in agendas:
        by_bucket.setdefault(row["id"][:2], []).append(row)
    one, two = next(rows for rows in by_bucket.values() if len(rows) >= 2)[:2]
    one["votes_json"] = clerk_votes(7, 0, MEMBERS)
    two["votes_json"] = clerk_votes(5, 2, MEMBERS)
    site = source.create_site(agendas=agendas, minutes=0)
    register(database_url, site)
    args = (f"subdomain={site.subdomain}", "document_type=agenda")
    assert crawl(database_url, source, *args).returncode == 0
    change_in_place(site, "agendas", [one["id"]], votes_json=two["votes_json"])
    change_in_place(site, "agendas", [two["id"]], votes_json=one["votes_json"])

    crawl(database_url, source, *args, "verify_only=true")
    checked = jobs(database_url, site.subdomain)[-1]
    assert (checked["verify_status"], checked["stale_count"]) == ("warned", 2), checked

    caught_up = crawl(database_url, source, *args)
    assert caught_up.returncode == 0, caught_up
    job = jobs(database_url, site.subdomain)[-1]
    assert (job["verify_status"], job["pages_updated"]) == ("passed", 2), job
    assert_mirror_equals_source(database_url, site, ("agenda",))


def test_a_blob_value_is_a_faithful_copy_that_passes(database_url, source):
    agendas = data.make_rows("agendas", 80, seed="blob")
    agendas[3]["page_image"] = b"\x89PNG\r\n\x1a\n\xff\xfe"  # a BLOB, served as {"$base64": ...}
    agendas[5]["entities_json"] = b"\xc3\x28 not UTF-8"
    site = source.create_site(agendas=agendas, minutes=0)
    register(database_url, site)
    args = (f"subdomain={site.subdomain}", "document_type=agenda")
    for _ in range(2):  # the backfill, then a catch-up: both judge the copy equal
        result = crawl(database_url, source, *args)
        assert result.returncode == 0, result
        assert jobs(database_url, site.subdomain)[-1]["verify_status"] == "passed", result
    assert (
        len(mirrored(database_url, site.subdomain, "agenda"))
        + len(fetch(database_url, "SELECT 1 FROM rejected_rows"))
        == 80
    )
