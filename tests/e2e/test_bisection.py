"""Catch-up at the cost of change, counted in requests from the look-alike's request log.

An unchanged site is one request (both tables in one SQL answer); a change confined to one
sub-bucket is bisected down to it and only it is listed; a change in every bucket still
bisects; answers cut short by a small max_returned_rows are split, never trusted; every URL
stays within 8 KB on the longest subdomain DNS allows. The mirror ends equal to the source in
all eight columns every time.
"""

from __future__ import annotations

from civicband.settings import URLLENGTH_LIMIT
from tests.e2e.crawl import (
    asked_buckets,
    assert_mirror_equals_source,
    backfilled,
    bisection_depths,
    change_in_place,
    crawl,
    is_bisection,
    is_by_id,
    is_digest,
    is_listing,
    jobs,
    page_requests,
    register,
    sql_requests,
)
from tests.lookalike import data

# What a request is worth to the cost model: one byte makes another round cheaper than listing
# more ids wherever a bucket holds more ids than its 16 sub-buckets' digests weigh (about 32),
# so these tests see bisection on sites small enough to build quickly.
BISECT = {"CIVICBAND_REQUEST_BYTES": 1}


def test_an_unchanged_site_costs_one_request_for_both_tables(database_url, source):
    site = backfilled(database_url, source, agendas=700, minutes=300)
    source.clear_requests()
    result = crawl(database_url, source, f"subdomain={site.subdomain}")
    assert result.returncode == 0, result
    sent = source.requests()
    assert len(sent) == 1 and is_digest(sent[0]), sent
    assert {j["verify_status"] for j in jobs(database_url, site.subdomain)[-2:]} == {"passed"}


def test_a_change_in_one_sub_bucket_lists_only_that_sub_bucket(database_url, source):
    # civic.band's time limit (the look-alike's is 1 s): both tables' digest in one answer.
    site = backfilled(
        database_url, source, agendas=12_000, minutes=200, settings={"sql_time_limit_ms": 3000}
    )
    # In the fullest bucket: 16 sub-buckets' digests weigh less than its ids listed.
    ids = sorted(site.ids("agendas"))
    fullest = max({i[:2] for i in ids}, key=lambda b: sum(i.startswith(b) for i in ids))
    target = next(i for i in ids if i.startswith(fullest))
    change_in_place(site, "agendas", [target], entities_json='{"persons": ["Corrected"]}')
    source.clear_requests()
    result = crawl(database_url, source, f"subdomain={site.subdomain}", settings=BISECT)
    assert result.returncode == 0, result
    assert_mirror_equals_source(database_url, site)
    sent = sql_requests(source)
    assert is_digest(sent[0]) and sum(map(is_digest, sent)) == 1, "one digest, both tables"
    bisections = [r for r in sent if is_bisection(r)]
    assert bisections and all(
        asked_buckets(r) == {"agenda": [target[: len(asked_buckets(r)["agenda"][0])]]}
        for r in bisections
    )
    [listing] = [r for r in bisections if is_listing(r)]
    [listed] = asked_buckets(listing)["agenda"]
    assert len(listed) >= 3 and target.startswith(listed), listed  # deeper than a bucket
    assert len(bisections) >= 2, "at least one round of sub-bucket digests before the listing"
    [by_id] = [r for r in sent if is_by_id(r)]
    assert "agenda_v=" + target in by_id["query"] and "agenda_w=" not in by_id["query"]
    assert len(sent) == 1 + len(bisections) + 1
    assert result.stats["civicband/bisect/requests"] == len(bisections)
    assert result.stats["civicband/catchup/bisections"] == len(bisections) - 1
    assert result.stats["civicband/catchup/listed_buckets"] == 1
    assert page_requests(source) == []
    agenda = next(
        j for j in reversed(jobs(database_url, site.subdomain)) if j["document_type"] == "agenda"
    )
    assert (agenda["mode"], agenda["verify_status"], agenda["pages_updated"]) == (
        "catchup",
        "passed",
        1,
    )


def test_a_change_in_every_bucket_still_bisects(database_url, source):
    site = backfilled(
        database_url, source, agendas=16_000, minutes=0, settings={"sql_time_limit_ms": 3000}
    )
    ids = sorted(site.ids("agendas"))
    changed = ids[::32]  # 500 rows: every one of the 256 buckets differs
    change_in_place(site, "agendas", changed, votes_json='{"tally": {"ayes": 6, "nays": 1}}')
    site.delete_rows("agendas", ids[3::40])
    site.add_rows("agendas", site.new_rows("agendas", 60, seed="every bucket"))
    source.clear_requests()
    result = crawl(
        database_url,
        source,
        f"subdomain={site.subdomain}",
        "document_type=agenda",
        settings=BISECT,
    )
    assert result.returncode == 0, result
    assert_mirror_equals_source(database_url, site, ("agenda",))
    sent = sql_requests(source)
    depths = [bisection_depths(r)["agenda"] for r in sent if is_bisection(r)]
    assert depths[0] < 12 and depths[-1] == 12, depths  # sub-bucket digests, then the listing
    listed = [b for r in sent if is_listing(r) for b in asked_buckets(r)["agenda"]]
    assert min(map(len, listed)) >= 3
    job = jobs(database_url, site.subdomain)[-1]
    assert (job["mode"], job["verify_status"]) == ("catchup", "passed")
    assert (job["pages_created"], job["pages_removed"]) == (60, len(ids[3::40]))
    assert page_requests(source, site.subdomain) == []


def test_answers_cut_short_by_a_small_max_returned_rows_are_split_never_trusted(
    database_url, source
):
    site = backfilled(
        database_url, source, agendas=2500, minutes=800, settings={"max_returned_rows": 20}
    )
    ids = sorted(site.ids("agendas"))
    change_in_place(site, "agendas", ids[::25], entities_json='{"persons": ["Split"]}')
    site.delete_rows("minutes", sorted(site.ids("minutes"))[::50])
    site.add_rows("minutes", site.new_rows("minutes", 45, seed="small answers"))
    source.clear_requests()
    result = crawl(database_url, source, f"subdomain={site.subdomain}", settings=BISECT)
    assert result.returncode == 0, result
    assert_mirror_equals_source(database_url, site)
    sent = sql_requests(source)
    # 512 digest rows, 100 changed ids, 45 new rows: none fits an answer of 20 rows.
    assert result.stats["civicband/digest/splits"] >= 1
    assert result.stats.get("civicband/bisect/splits", 0) >= 1 or all(
        sum(len(b) for b in asked_buckets(r).values()) <= 20 for r in sent if is_bisection(r)
    )
    assert sum(map(is_by_id, sent)) > (100 + 45) / 20
    assert {j["verify_status"] for j in jobs(database_url, site.subdomain)[-2:]} == {"passed"}


def test_urls_stay_within_8_kb_on_the_longest_subdomain(database_url, source):
    longest = "a" * 60 + ".ca"  # a DNS label is at most 63 characters
    site = backfilled(database_url, source, agendas=3000, minutes=1500, subdomain=longest)
    ids = sorted(site.ids("agendas"))
    change_in_place(site, "agendas", ids[::3], entities_json='{"persons": ["Long"]}')
    site.add_rows("minutes", site.new_rows("minutes", 900, seed="long urls"))
    source.clear_requests()
    result = crawl(database_url, source, f"subdomain={site.subdomain}")
    assert result.returncode == 0, result
    assert_mirror_equals_source(database_url, site)
    root = f"https://{longest}.civic.band"  # civic.band's own URL is the longer one
    sent = sql_requests(source)
    lengths = [len(root) + len(r["path"]) - len(f"/{longest}") + 1 + len(r["query"]) for r in sent]
    assert max(lengths) <= URLLENGTH_LIMIT <= 8000, max(lengths)
    assert sum(map(is_by_id, sent)) >= 2  # 900 new ids need more than one URL


def test_every_value_re_extracted_is_fetched_as_ranges_of_values_only(database_url, source):
    # Pages of 2 KB of text, as civic.band's are: the text is most of a full pass's bytes.
    site = backfilled(
        database_url,
        source,
        agendas=data.make_rows("agendas", 3000, seed="ranges", text_size=2000),
        minutes=data.make_rows("minutes", 1000, seed="ranges", text_size=2000),
    )
    full = sum(r["bytes"] or 0 for r in source.requests())
    for table in ("agendas", "minutes"):
        ids = sorted(site.ids(table))
        change_in_place(site, table, ids, entities_json='{"persons": ["Everyone"]}')
    source.clear_requests()
    result = crawl(database_url, source, f"subdomain={site.subdomain}")
    assert result.returncode == 0, result
    assert_mirror_equals_source(database_url, site)
    assert result.stats["civicband/catchup/ranges"] >= 1
    assert "civicband/catchup/full_passes" not in result.stats
    assert page_requests(source) == []
    moved = sum(r["bytes"] or 0 for r in source.requests())
    assert moved < 0.3 * full, (moved, full)  # values only: the text stays where it is
    for job in jobs(database_url, site.subdomain)[-2:]:
        assert (job["mode"], job["verify_status"], job["pages_created"]) == ("catchup", "passed", 0)


def test_every_value_re_extracted_on_a_site_bisected_deeper_is_caught_up(database_url, source):
    # Every entity re-extracted (what civic.band does after each rebuild) where the listing is
    # 3 digits deep: 4096 dense buckets are more than one URL carries, so several are asked.
    site = backfilled(
        database_url, source, agendas=16_000, minutes=0, settings={"sql_time_limit_ms": 3000}
    )
    change_in_place(site, "agendas", sorted(site.ids("agendas")), entities_json='{"p": ["E"]}')
    source.clear_requests()
    result = crawl(
        database_url,
        source,
        f"subdomain={site.subdomain}",
        "document_type=agenda",
        "repair=true",
        settings=BISECT,
    )
    job = jobs(database_url, site.subdomain)[-1]
    assert result.returncode == 0, (job["last_error"], result)
    assert_mirror_equals_source(database_url, site, ("agenda",))
    assert result.stats["civicband/catchup/ranges"] > 256  # deeper than the first buckets
    assert (job["pages_updated"], job["verify_status"]) == (16_000, "passed")


def test_exact_stale_ids_outside_listed_buckets_are_fetched_by_id(database_url, source):
    # Letters exchanged inside a name: a change the fingerprint misses by design (bench/README),
    # which exact=true finds. No bucket differs and none is listed: the 60 ids go by id, not
    # as ranges of whole buckets.
    site = source.create_site(agendas=3000, minutes=0)
    targets = sorted(site.ids("agendas"))[::50]
    change_in_place(site, "agendas", targets, entities_json='{"persons": ["Smith"]}')
    register(database_url, site)
    assert crawl(database_url, source, f"subdomain={site.subdomain}").returncode == 0
    change_in_place(site, "agendas", targets, entities_json='{"persons": ["Simth"]}')
    source.clear_requests()
    result = crawl(
        database_url,
        source,
        f"subdomain={site.subdomain}",
        "document_type=agenda",
        "repair=true",
        "exact=true",
    )
    assert result.returncode == 0, result
    assert_mirror_equals_source(database_url, site, ("agenda",))
    assert result.stats.get("civicband/catchup/buckets", 0) == 0  # the fingerprint missed it
    assert "civicband/catchup/ranges" not in result.stats
    assert sum(map(is_by_id, sql_requests(source))) == 1
