"""`passed` means equal: the holes a demanding operator found in the proof, each closed.

A site that gains columns, a `next` that ends early, a site that loses half its pages, rows
that are identical twins: every scenario ends with the mirror equal to the source or a verdict
that says it is not, and no page the source still has is removed.
"""

from __future__ import annotations

import pytest

from tests.e2e.crawl import (
    assert_mirror_equals_source,
    crawl,
    fetch,
    jobs,
    mirrored,
    register,
)
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
