"""`passed` means equal: the holes a demanding operator found in the proof, each closed.

A site that gains columns, a `next` that ends early, a site that loses half its pages, rows
that are identical twins: every scenario ends with the mirror equal to the source or a verdict
that says it is not, and no page the source still has is removed.
"""

from __future__ import annotations

from tests.e2e.crawl import (
    assert_mirror_equals_source,
    crawl,
    jobs,
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
