"""exact=true end to end: every value compared, on real PostgreSQL and both Datasette lines.

The scenario changes values where the digests may not look (two rows of one bucket exchanging
their votes); what exact=true must report does not depend on how the digests' fingerprint is
built, so only that is asserted unconditionally.
"""

from __future__ import annotations

import math
from collections import defaultdict

from civicband import digest
from tests.e2e.crawl import (
    assert_mirror_equals_source,
    backfilled,
    crawl,
    is_by_id,
    jobs,
    page_requests,
    register,
    sql_of,
    sql_requests,
)


def is_value_listing(request) -> bool:
    """One answer of exact=true's listing (civicband.bisect.range_values_sql)."""
    return sql_of(request).startswith("select * from (select s.id id,s.page_image ")


def exchanged_votes(site, table: str, pairs: int) -> list[str]:
    """Rows of one bucket exchange their votes_json, as a re-extraction mixing rows up would."""
    buckets = defaultdict(list)
    for row in site.rows(table):
        if row["votes_json"] and digest.HEX_ID.match(str(row["id"])):
            buckets[row["id"][:2]].append(row)
    chosen = []
    for rows in buckets.values():
        if len(chosen) == pairs:
            break
        first, *others = rows
        other = next((r for r in others if r["votes_json"] != first["votes_json"]), None)
        if other is not None:
            chosen.append((first, other))
    assert len(chosen) == pairs, "the generated site has too few buckets with two votes"
    ids = [row["id"] for pair in chosen for row in pair]
    site.delete_rows(table, ids)
    site.add_rows(
        table,
        [
            changed
            for a, b in chosen
            for changed in (
                {**a, "votes_json": b["votes_json"]},
                {**b, "votes_json": a["votes_json"]},
            )
        ],
    )
    return sorted(ids)


def test_values_the_digests_may_miss_are_counted_then_fetched(database_url, source):
    site = backfilled(database_url, source, agendas=5, minutes=600)
    before = {row["id"]: row for row in site.rows("minutes")}
    exchanged = exchanged_votes(site, "minutes", pairs=2)
    after = {row["id"]: row for row in site.rows("minutes")}
    only = (f"subdomain={site.subdomain}", "document_type=minutes")

    daily = crawl(database_url, source, *only, "verify_only=true")
    assert daily.returncode == 0, daily
    by_digest = jobs(database_url, site.subdomain)[-1]
    assert by_digest["verify_method"] == "digest"
    if sum(map(digest.content_fp, before.values())) == sum(map(digest.content_fp, after.values())):
        # This fingerprint does not tie values to ids: the exchange is invisible to it.
        assert by_digest["verify_status"] == "passed", by_digest

    source.clear_requests()
    weekly = crawl(database_url, source, *only, "verify_only=true", "exact=true")
    assert weekly.returncode == 0, weekly
    check = jobs(database_url, site.subdomain)[-1]
    assert (check["mode"], check["verify_method"], check["stale_count"]) == ("verify", "exact", 4)
    assert check["verify_status"] == "warned"  # within the thresholds, but never passed
    assert weekly.lines("4 pages out of date"), weekly
    assert weekly.stats["civicband/exact/stale"] == 4
    assert weekly.stats["civicband/exact/compared"] == len(after)
    # Verifying fetches no page: table pages and rows by id are never asked for.
    assert not page_requests(source, site.subdomain)
    assert not [r for r in sql_requests(source, site.subdomain) if is_by_id(r)]

    repair = crawl(database_url, source, *only, "repair=true", "exact=true")
    assert repair.returncode == 0, repair
    fixed = jobs(database_url, site.subdomain)[-1]
    assert (fixed["mode"], fixed["verify_status"], fixed["verify_method"]) == (
        "catchup",
        "passed",
        "exact",
    )
    assert (fixed["pages_updated"], fixed["pages_created"], fixed["stale_count"]) == (4, 0, 0)
    assert repair.stats["civicband/catchup/fetched"] == len(exchanged)
    assert_mirror_equals_source(database_url, site)

    # The default mode with exact: nothing changed, so verification judges by the listing the
    # catch-up just took (one answer for 600 rows) instead of listing every value again.
    source.clear_requests()
    again = crawl(database_url, source, *only, "exact=true")
    assert again.returncode == 0, again
    last = jobs(database_url, site.subdomain)[-1]
    assert (last["mode"], last["verify_status"], last["verify_method"]) == (
        "catchup",
        "passed",
        "exact",
    )
    assert len([r for r in sql_requests(source, site.subdomain) if is_value_listing(r)]) == 1


def test_a_small_max_returned_rows_is_listed_completely(database_url, source):
    site = backfilled(database_url, source, agendas=150, minutes=0)
    site.configure(max_returned_rows=40)
    rows = {row["id"]: row for row in site.rows("agendas")}
    hex_ids = sorted(i for i in rows if digest.HEX_ID.match(str(i)))
    last = rows[hex_ids[-1]]  # past every truncated answer: only a complete listing meets it
    site.delete_rows("agendas", [last["id"]])
    site.add_rows("agendas", [{**last, "page_image": (last["page_image"] or "") + "x"}])
    source.clear_requests()

    result = crawl(
        database_url,
        source,
        f"subdomain={site.subdomain}",
        "document_type=agenda",
        "verify_only=true",
        "exact=true",
    )
    assert result.returncode == 0, result
    job = jobs(database_url, site.subdomain)[-1]
    assert (job["verify_method"], job["stale_count"]) == ("exact", 1)
    assert result.stats["civicband/exact/compared"] == len(hex_ids)
    listings = [r for r in sql_requests(source, site.subdomain) if is_value_listing(r)]
    assert len(listings) >= math.ceil(len(hex_ids) / 40)


def test_exact_with_full_is_a_one_line_error(database_url, source):
    site = source.create_site(agendas=3, minutes=3)
    register(database_url, site)
    result = crawl(database_url, source, f"subdomain={site.subdomain}", "full=true", "exact=true")
    assert result.returncode == 2, result
    (line,) = [x for x in result.stderr.splitlines() if "error" in x]
    assert line.startswith("civicband: error: exact:"), result
    assert "Traceback" not in result.stderr
    assert not jobs(database_url, site.subdomain)
