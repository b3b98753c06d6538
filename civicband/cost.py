"""What a catch-up's requests cost, predicted before they are spent (SPEC §3, catch-up).

One model, in units of one request: an answer's bytes count as `bytes / request_bytes`
requests (a request's worth of bytes: its round trip, or its share of the public rate limit,
is worth that many bytes of answer). The bisection chooses its depth with it, the catch-up
compares itself with a full pass with it, the progress line's ETA counts its requests, and
bench/estimate.py models civic.band with it.

How the rows of a table fall into buckets is modelled as uniform: ids are content hashes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from civicband.bisect import LIST_DEPTH

# Bytes of one entry in an answer, as civicband/bisect.py's SQL packs them (measured on the
# look-alike): a listed id and its fingerprint, a sub-bucket's digest, a whole row of a
# clerk-shaped site (2 KB of text), and the three columns the id does not hash.
LISTED_BYTES = 20
DIGEST_BYTES = 40
ROW_BYTES = 2300
VALUES_BYTES = 350
TOP_BUCKETS = 256  # the first digest's buckets: two hex digits
FANOUT = 16  # sub-buckets of a bucket, one hex digit deeper
# A range of ids is fetched whole (every row's values) rather than id by id once at least this
# share of its rows changed: an id costs 13 characters of URL, a range costs none per row.
DENSE_SHARE = 0.5


@dataclass(frozen=True)
class Limits:
    """What one request may carry, and what a request is worth in bytes."""

    request_bytes: int = 256 * 1024
    max_rows: int = 1000  # rows of one answer (the site's max_returned_rows)
    page_size: int = 1000  # rows of one full-pass page
    split_rows: int = 50_000  # rows one answer may fingerprint within the time limit
    ids_per_request: int = 450  # ids one by-id request's URL carries
    prefixes_per_request: int = 500  # buckets one bisection request's URL names
    row_bytes: int = ROW_BYTES

    def units(self, requests: float, answer_bytes: float) -> float:
        """Requests plus bytes, in requests."""
        return requests + answer_bytes / self.request_bytes


@dataclass
class Prediction:
    """Requests and bytes a plan is expected to take."""

    requests: float = 0.0
    bytes: float = 0.0
    rounds: list[int] = field(default_factory=list)  # each bisection round's depth
    asked: list[Frontier] = field(default_factory=list)  # what each round asks, listing last

    def add(self, requests: float, answer_bytes: float) -> None:
        """Count one more step."""
        self.requests += requests
        self.bytes += answer_bytes

    def units(self, limits: Limits) -> float:
        """The prediction in requests (bytes weighed by Limits.request_bytes)."""
        return limits.units(self.requests, self.bytes)


@dataclass(frozen=True)
class Frontier:
    """Buckets that differ at one depth: their count, the source's rows in them, the changes."""

    depth: int
    buckets: int
    rows: float
    changes: float

    def requests_to_ask(self, limits: Limits) -> int:
        """Requests one round over these buckets takes: URL, answer rows and the time limit."""
        if self.buckets <= 0:
            return 0
        return max(
            math.ceil(self.buckets / limits.prefixes_per_request),
            math.ceil(self.buckets / limits.max_rows),
            math.ceil(self.rows / limits.split_rows),
        )


def changes_behind(differing: int, buckets: int, at_least: float = 0.0) -> float:
    """Changed rows that most likely make `differing` of `buckets` equal-sized buckets differ.

    Rows falling uniformly: `buckets * (1 - (1 - 1/buckets) ** c)` differ after c changes; all
    of them differing says only that there are at least about buckets * ln(buckets).
    """
    if differing <= 0 or buckets <= 0:
        return float(at_least)
    if buckets == 1:
        return max(1.0, at_least)
    if differing >= buckets:
        guess = buckets * math.log(buckets)
    else:
        guess = math.log(1 - differing / buckets) / math.log(1 - 1 / buckets)
    return max(guess, float(differing), at_least)


def differing_after(buckets: float, changes: float) -> float:
    """Buckets expected to differ when `changes` rows fall uniformly into `buckets`."""
    if buckets <= 0:
        return 0.0
    if buckets < 1:
        return min(buckets, changes)
    return buckets * (1 - (1 - 1 / buckets) ** changes)


def listing_cost(frontier: Frontier, limits: Limits) -> Prediction:
    """Listing every id of the frontier's buckets."""
    got = Prediction(asked=[frontier])
    got.add(frontier.requests_to_ask(limits), frontier.rows * LISTED_BYTES)
    return got


def bisect_cost(frontier: Frontier, depth: int, limits: Limits, table_rows: float) -> Prediction:
    """One round of digests `depth` deep for the frontier's buckets, then the best from there."""
    got = Prediction(rounds=[depth], asked=[frontier])
    children = frontier.buckets * FANOUT ** (depth - frontier.depth)
    # Only buckets holding rows answer: no more than the rows there are.
    answered = min(children, frontier.rows) if frontier.rows else 0.0
    got.add(frontier.requests_to_ask(limits), answered * DIGEST_BYTES)
    per_child = frontier.rows / children if children else 0.0
    differing = differing_after(children, frontier.changes) if per_child else 0.0
    after = Frontier(
        depth, max(1, round(differing)), differing * max(per_child, 1.0), frontier.changes
    )
    rest = plan(after, limits, table_rows)
    got.add(rest.requests, rest.bytes)
    got.rounds += rest.rounds
    got.asked += rest.asked
    return got


def plan(frontier: Frontier, limits: Limits, table_rows: float) -> Prediction:
    """The cheapest way to list the changed ids of a frontier: list now, or bisect first."""
    best = listing_cost(frontier, limits)
    if frontier.buckets <= 0 or frontier.rows <= frontier.changes:
        return best
    for depth in (frontier.depth + 1, frontier.depth + 2):
        if depth >= LIST_DEPTH or FANOUT**depth > max(table_rows, 1) * FANOUT:
            break
        option = bisect_cost(frontier, depth, limits, table_rows)
        if option.units(limits) < best.units(limits):
            best = option
    return best


def next_depth(frontier: Frontier, limits: Limits, table_rows: float) -> int:
    """The depth of the next round: a deeper digest, or LIST_DEPTH to list the ids now."""
    chosen = plan(frontier, limits, table_rows)
    return chosen.rounds[0] if chosen.rounds else LIST_DEPTH


def fetch_cost(new: float, changed: float, limits: Limits, rows: float = 0.0) -> Prediction:
    """Fetching new rows whole and changed ones for their values only, by id; or, when at least
    DENSE_SHARE of the `rows` they lie among changed, those rows' values by range."""
    got = Prediction()
    per = min(limits.ids_per_request, limits.max_rows)
    if new > 0:
        got.add(math.ceil(new / per), new * limits.row_bytes)
    if changed > 0 and rows > 0 and changed >= DENSE_SHARE * rows:
        got.add(math.ceil(rows / limits.max_rows), rows * VALUES_BYTES)
    elif changed > 0:
        got.add(math.ceil(changed / per), changed * VALUES_BYTES)
    return got


def full_pass(rows: float, limits: Limits) -> Prediction:
    """A full pass: every page, whole rows (and its digest and count at the end)."""
    got = Prediction()
    got.add(math.ceil(rows / limits.page_size) + 2, rows * limits.row_bytes)
    return got


def digest_requests(tables: list[float], limits: Limits) -> int:
    """A site's digests (civicband/reads.py): both tables in one answer; tables large together
    one by one; a table past split_rows in 16 id ranges."""
    if sum(tables) <= limits.split_rows:
        return 1
    return sum(1 if rows <= limits.split_rows else FANOUT for rows in tables)


def catch_up(tables: Iterable[tuple[float, float, float]], limits: Limits) -> Prediction:
    """A site's whole catch-up: its tables given as (rows, new or removed rows, rows changed in
    place), removed ones costing what new ones do to find and nothing to fetch (pass their
    bytes in as new ones only when they are new).

    Both tables' digests in one answer, each round of bisection (and the listing) one round
    for both tables, the fetch of both in the same answers: what civicband/rounds.py does.
    This is what the catch-up compares with a full pass, and bench/estimate.py models
    civic.band with.
    """
    tables = list(tables)
    total = sum(rows for rows, _, _ in tables)
    got = Prediction()
    sizes = [rows for rows, _, _ in tables]
    got.add(digest_requests(sizes, limits), min(total, TOP_BUCKETS * len(tables)) * DIGEST_BYTES)
    plans = []
    new = changed = 0.0
    for rows, moved, in_place in tables:
        changes = moved + in_place
        if changes <= 0 or rows <= 0:
            continue
        buckets = min(TOP_BUCKETS, rows)
        differing = differing_after(buckets, changes)
        frontier = Frontier(2, max(1, round(differing)), differing * rows / buckets, changes)
        plans.append(plan(frontier, limits, rows))
        new += moved
        changed += in_place
    for step in range(max((len(p.asked) for p in plans), default=0)):
        asked = [p.asked[step] for p in plans if step < len(p.asked)]
        both = Frontier(
            max(f.depth for f in asked),
            sum(f.buckets for f in asked),
            sum(f.rows for f in asked),
            sum(f.changes for f in asked),
        )
        got.add(both.requests_to_ask(limits), 0)
    got.add(0, sum(p.bytes for p in plans))
    got.rounds = max((p.rounds for p in plans), key=len, default=[])
    fetched = fetch_cost(new, changed, limits, total if changed >= DENSE_SHARE * total else 0)
    got.add(fetched.requests, fetched.bytes)
    return got
