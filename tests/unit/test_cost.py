"""The cost model (civicband/cost.py): what a catch-up's requests are predicted to cost."""

from __future__ import annotations

import itertools
import math

import pytest

from civicband import cost
from civicband.cost import (
    DIGEST_BYTES,
    LIST_DEPTH,
    LISTED_BYTES,
    VALUES_BYTES,
    Frontier,
    Limits,
    catch_up,
    changes_behind,
    differing_after,
    fetch_cost,
    full_pass,
    next_depth,
    plan,
)

LIMITS = Limits()

# ---- changes_behind and differing_after ---------------------------------------------------------


@pytest.mark.parametrize(
    ("buckets", "changes"),
    list(itertools.product([2, 16, 256, 4096, 65536], [1, 3, 10, 50, 300, 2000])),
)
def test_changes_behind_inverts_differing_after(buckets, changes):
    differing = differing_after(buckets, changes)
    assert 0 < differing <= min(buckets, changes)
    if differing < buckets:  # some bucket may be equal: the changes can be told
        assert changes_behind(differing, buckets) == pytest.approx(changes, rel=1e-6)
    else:  # all of them differ: at least about buckets * ln(buckets), never more than there are
        saturated = max(buckets * math.log(buckets), buckets)
        assert changes_behind(differing, buckets) == pytest.approx(saturated)
        assert changes_behind(differing, buckets) <= changes


@pytest.mark.parametrize(
    ("buckets", "differing"),
    [(b, d) for b in (2, 16, 256, 4096) for d in (1, 2, 7, 15, 100, 255) if d < b],
)
def test_differing_after_inverts_changes_behind(buckets, differing):
    changes = changes_behind(differing, buckets)
    assert changes >= differing  # each differing bucket holds at least one change
    assert differing_after(buckets, changes) == pytest.approx(differing, rel=1e-9)


@pytest.mark.parametrize("buckets", [2, 16, 256, 4096])
def test_differing_after_grows_with_changes_and_stays_below_the_buckets(buckets):
    values = [differing_after(buckets, c) for c in (0, 1, 2, 10, 100, 10_000, 1_000_000)]
    assert values[0] == 0
    assert values[1] == pytest.approx(1)  # one change: one bucket
    assert values[0] < values[1] < values[2] < values[3]
    assert all(a <= b for a, b in zip(values, values[1:], strict=False))
    assert values[-1] == pytest.approx(buckets)
    assert all(v <= buckets for v in values)


def test_every_bucket_differing_says_at_least_buckets_ln_buckets():
    assert changes_behind(256, 256) == pytest.approx(256 * math.log(256))
    assert changes_behind(300, 256) == pytest.approx(256 * math.log(256))
    assert changes_behind(256, 256, at_least=5000) == 5000


@pytest.mark.parametrize(
    ("differing", "buckets", "at_least", "expected"),
    [
        (0, 256, 0, 0.0),
        (0, 256, 7, 7.0),  # nothing differs: what the counts say, no less
        (3, 0, 2, 2.0),
        (1, 1, 0, 1.0),
        (1, 1, 9, 9.0),
        (1, 256, 0, 1.0),
        (10, 256, 40, 40.0),  # rows moved between counts: at least that many changes
    ],
)
def test_changes_behind_edges(differing, buckets, at_least, expected):
    assert changes_behind(differing, buckets, at_least) == pytest.approx(expected)


def test_differing_after_of_less_than_one_bucket():
    assert differing_after(0, 10) == 0
    assert differing_after(0.5, 10) == 0.5
    assert differing_after(0.5, 0.25) == 0.25


# ---- plan and next_depth -------------------------------------------------------------------------


def test_small_buckets_are_listed_at_once():
    frontier = Frontier(2, 3, 30, 3)  # 3 buckets of 10 rows
    chosen = plan(frontier, LIMITS, 2560)
    assert chosen.rounds == []
    assert chosen.asked == [frontier]
    assert (chosen.requests, chosen.bytes) == (1, 30 * LISTED_BYTES)
    assert next_depth(frontier, LIMITS, 2560) == LIST_DEPTH


def test_large_buckets_with_few_changes_are_bisected():
    rows = 1_000_000
    frontier = Frontier(2, 10, 10 * rows / 256, 10)  # 10 changes in buckets of ~3,900 rows
    chosen = plan(frontier, LIMITS, rows)
    assert chosen.rounds and chosen.rounds[0] in (3, 4)
    listing = cost.listing_cost(frontier, LIMITS)
    assert chosen.units(LIMITS) < listing.units(LIMITS)
    assert next_depth(frontier, LIMITS, rows) == chosen.rounds[0]
    # The listing at the end lists far fewer rows than the buckets hold.
    assert chosen.asked[-1].rows < frontier.rows / 10


def test_a_frontier_whose_rows_all_changed_is_listed():
    frontier = Frontier(2, 50, 1000, 1000)
    assert plan(frontier, LIMITS, 1_000_000).rounds == []


@pytest.mark.parametrize(
    ("depth", "buckets", "per_bucket", "changes"),
    list(
        itertools.product(
            [2, 3, 5, 8, 10, 11], [1, 10, 300, 5000], [1, 40, 4000, 100_000], [1, 20, 1000]
        )
    ),
)
def test_next_depth_is_deeper_and_below_12_or_12(depth, buckets, per_bucket, changes):
    frontier = Frontier(depth, buckets, buckets * per_bucket, min(changes, buckets * per_bucket))
    table_rows = max(buckets * per_bucket, 1)
    chosen = next_depth(frontier, LIMITS, table_rows)
    assert chosen == LIST_DEPTH or depth < chosen < LIST_DEPTH
    assert chosen == LIST_DEPTH or chosen <= depth + 2
    rounds = plan(frontier, LIMITS, table_rows).rounds
    assert all(a < b < LIST_DEPTH for a, b in zip([depth, *rounds], rounds, strict=False))


def test_a_round_costs_what_the_url_the_answer_and_the_time_limit_allow():
    limits = Limits(prefixes_per_request=500, max_rows=1000, split_rows=50_000)
    assert Frontier(3, 0, 0, 0).requests_to_ask(limits) == 0
    assert Frontier(3, 501, 10, 1).requests_to_ask(limits) == 2  # the URL
    assert Frontier(3, 400, 10, 1).requests_to_ask(Limits(max_rows=100)) == 4  # answer rows
    assert Frontier(3, 10, 120_000, 1).requests_to_ask(limits) == 3  # the time limit


# ---- catch_up, fetch_cost, full_pass -------------------------------------------------------------


def test_an_unchanged_site_is_one_request_for_both_tables():
    got = catch_up([(35_000, 0, 0), (15_000, 0, 0)], LIMITS)
    assert got.requests == 1
    assert got.bytes == 2 * 256 * DIGEST_BYTES
    assert got.rounds == []


def test_an_unchanged_site_past_split_rows_is_asked_table_by_table_then_in_ranges():
    assert catch_up([(40_000, 0, 0), (15_000, 0, 0)], LIMITS).requests == 2
    assert catch_up([(30_000, 0, 0), (20_001, 0, 0)], LIMITS).requests == 2
    assert catch_up([(30_000, 0, 0), (20_000, 0, 0)], LIMITS).requests == 1
    assert catch_up([(60_000, 0, 0), (20_000, 0, 0)], LIMITS).requests == 16 + 1


@pytest.mark.parametrize(
    ("agenda", "minutes"),
    [
        ((35_000, 350, 0), (15_000, 150, 0)),  # 1 % new or removed
        ((35_000, 0, 350), (15_000, 0, 150)),  # 1 % changed in place
        ((35_000, 175, 175), (15_000, 75, 75)),
    ],
    ids=["new", "in place", "both"],
)
def test_one_percent_changed_costs_at_most_15_percent_of_a_full_pass(agenda, minutes):
    got = catch_up([agenda, minutes], LIMITS)
    full = full_pass(50_000, LIMITS)
    assert got.requests <= 0.15 * full.requests
    assert got.units(LIMITS) < full.units(LIMITS) / 10
    assert got.rounds  # 1 % of 50,000 rows is found by bisecting, not by listing everything


def test_a_round_of_bisection_for_both_tables_is_counted_once():
    alone = catch_up([(35_000, 0, 350)], LIMITS)
    both = catch_up([(35_000, 0, 350), (15_000, 0, 150)], LIMITS)
    # Less the digests (one request) and the fetch (both tables' ids in the same requests),
    # the rounds of bisection cost the same for two tables as for one.
    rounds_alone = alone.requests - 1 - fetch_cost(0, 350, LIMITS).requests
    rounds_both = both.requests - 1 - fetch_cost(0, 500, LIMITS).requests
    assert rounds_both == rounds_alone == len(alone.rounds) + 1  # each round, and the listing


def test_fetch_cost_by_id():
    got = fetch_cost(100, 400, LIMITS)
    assert got.requests == 1 + 1
    assert got.bytes == 100 * LIMITS.row_bytes + 400 * VALUES_BYTES
    assert fetch_cost(0, 451, LIMITS).requests == 2  # 450 ids a request
    assert fetch_cost(0, 451, Limits(max_rows=100)).requests == 5  # or the answer's rows
    assert fetch_cost(0, 0, LIMITS).requests == 0


def test_fetch_cost_takes_a_range_when_most_rows_changed():
    by_range = fetch_cost(0, 1_500, LIMITS, rows=2_000)
    assert by_range.requests == 2  # 2,000 rows a thousand an answer, not 1,500 ids by 450
    assert by_range.bytes == 2_000 * VALUES_BYTES
    by_id = fetch_cost(0, 900, LIMITS, rows=2_000)  # under half: by id
    assert by_id.requests == 2
    assert by_id.bytes == 900 * VALUES_BYTES
    assert fetch_cost(0, 1_500, LIMITS).requests == math.ceil(1_500 / 450)


def test_full_pass_is_every_page_and_its_digest_and_count():
    got = full_pass(50_000, LIMITS)
    assert got.requests == 50 + 2
    assert got.bytes == 50_000 * LIMITS.row_bytes
    assert full_pass(50_001, Limits(page_size=100)).requests == 501 + 2


def test_units_weigh_bytes_by_a_requests_worth():
    limits = Limits(request_bytes=1000)
    assert limits.units(3, 2500) == 5.5
    prediction = cost.Prediction()
    prediction.add(2, 500)
    prediction.add(1, 500)
    assert prediction.units(limits) == 4
