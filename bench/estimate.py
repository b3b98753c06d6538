"""Estimate a daily catch-up of all of civic.band against a full pass: requests, bytes, hours.

Arithmetic only (no network): a model of the catch-up's requests (civicband/catchup.py,
civicband/source.py) over an assumed civic.band, with per-request costs measured by
bench/catchup.py and bench/digest.py. Batch sizes (buckets per listing request, ids per by-id
request) are computed with the crawl's own URL builders. `--check` first runs the model on
bench/catchup.py's sites and prints what it predicts next to what that benchmark measured.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass

from civicband import datasette, digest, settings
from civicband.reads import COLUMNS

URL_LIMIT = 2083  # Scrapy's URLLENGTH_LIMIT
ROOT = "https://oakland.ca.civic.band"
PAGE = 1000  # rows per page / SQL answer with the secret
PUBLIC_PAGE = 100  # rows per table page without it
PUBLIC_PER_MINUTE = 15
PAGES_PER_MEETING = 4.5  # new pages arrive as meetings (data.py: 1-8 pages)

# Measured (bench/catchup.py, bench/digest.py, this machine): bytes and server seconds.
ROW_BYTES = 2260  # a row as JSON in a page or a by-id answer
LISTED_BYTES = 40  # an id and its fingerprint in a listing answer
BUCKET_BYTES = 80  # one bucket's line in a digest answer
DIGEST_S_PER_ROW = 11e-6  # whole digest, warm (bench/digest.py: 2.2 s / 200,000 rows)
PAGE_S = 0.075  # a 1000-row page at the server
SMALL_SQL_S = 0.02  # a listing or by-id answer at the server


def longest_fit(build: callable, items: list[str]) -> int:
    """How many items one request can carry within URL_LIMIT."""
    n = 1
    while n < len(items) and len(build(items[: n + 1])) <= URL_LIMIT:
        n += 1
    return n


def batch_sizes() -> tuple[int, int]:
    """(buckets per listing request, ids per by-id request), as the crawl's _chunks cuts them."""
    listing = digest.listing_sql("minutes", COLUMNS, PAGE)  # the longest, as _chunks assumes
    buckets = [f"{i:02x}" for i in range(256)]

    def list_url(part: list[str]) -> str:
        values = {"buckets": json.dumps(part, separators=(",", ":")), "after": "f" * 12}
        return datasette.sql_url(ROOT, "1.0", listing, **values)

    by_id = digest.rows_by_id_sql("agendas")
    ids = [f"{i:012x}" for i in range(1000)]

    def id_url(part: list[str]) -> str:
        return datasette.sql_url(ROOT, "1.0", by_id, ids=json.dumps(part, separators=(",", ":")))

    return longest_fit(list_url, buckets), longest_fit(id_url, ids)


BUCKETS_PER_LISTING, IDS_PER_BY_ID = batch_sizes()


@dataclass
class Cost:
    """Requests, bytes and server seconds, by kind."""

    digest: float = 0
    listing: float = 0
    by_id: float = 0
    pages: float = 0
    verify: float = 0
    bytes: float = 0
    server_s: float = 0

    @property
    def requests(self) -> float:
        return self.digest + self.listing + self.by_id + self.pages + self.verify

    def __iadd__(self, other: Cost) -> Cost:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self


def digest_requests(n: int, split_rows: int, sql_page: int) -> int:
    """Digest requests for one table: one, or 16 ranges above split_rows (or when truncated)."""
    if n > split_rows:
        return 16
    if min(n, 256) > sql_page:  # a truncated answer, then split (source.py: digest)
        return 17
    return 1


def full_pass(n: int, page: int, split_rows: int, sql_page: int) -> Cost:
    """A full pass of one table: its pages, then verification (count and digest)."""
    d = digest_requests(n, split_rows, sql_page)
    return Cost(
        pages=max(1, math.ceil(n / page)),  # `next` is null exactly on the last page
        verify=1 + d,
        bytes=n * ROW_BYTES + min(n, 256) * BUCKET_BYTES,
        server_s=math.ceil(n / PAGE) * PAGE_S + n * DIGEST_S_PER_ROW,
    )


def catch_up(
    n: int, fetch: float, changed_buckets: float, page: int, split_rows: int, sql_page: int
) -> Cost:
    """One table's catch-up: digest; if anything differs, listing, by-id fetches (or a pass)."""
    cost = Cost(
        digest=digest_requests(n, split_rows, sql_page),
        bytes=min(n, 256) * BUCKET_BYTES,
        server_s=n * DIGEST_S_PER_ROW,
    )
    if changed_buckets <= 0:
        return cost
    listed = n * min(changed_buckets, 256) / 256
    chunks = math.ceil(changed_buckets / BUCKETS_PER_LISTING)
    cost.listing = chunks + math.floor(listed / sql_page)
    cost.bytes += listed * LISTED_BYTES
    cost.server_s += cost.listing * SMALL_SQL_S
    by_id = math.ceil(fetch / IDS_PER_BY_ID)
    if by_id > math.ceil(n / PAGE) + 1:  # catchup.py: _cheaper_to_page (counts 100 ids/request)
        cost += full_pass(n, page, split_rows, sql_page)
    else:
        cost.by_id = by_id
        cost.bytes += fetch * ROW_BYTES
        cost.server_s += by_id * SMALL_SQL_S
    return cost


def buckets_hit(k: float) -> float:
    """Expected id buckets that k random new/changed/removed ids touch."""
    return 256 * (1 - math.exp(-k / 256))


def sites(count: int, total: int, exponent: float) -> list[int]:
    """Site sizes: Zipf-like (size of the i-th largest ~ 1/i^exponent), summing to total."""
    weights = [1 / (i + 1) ** exponent for i in range(count)]
    scale = total / sum(weights)
    return [max(1, round(w * scale)) for w in weights]


def tables(site_sizes: list[int], agenda_share: float) -> list[int]:
    """Each site's agendas and minutes."""
    out = []
    for size in site_sizes:
        agendas = round(size * agenda_share)
        out += [agendas, size - agendas]
    return out


def daily(
    sizes: list[int],
    new_rate: float,
    inplace: float,
    rebuilt: float,
    page: int,
    split_rows: int,
    sql_page: int,
) -> Cost:
    """Expected cost of one day's catch-up of every table.

    A share `rebuilt` of the sites was rebuilt since yesterday (once per 1.5 days: 2/3); a
    rebuilt table has new pages for the days since its last rebuild (new_rate a day, arriving
    as meetings) and `inplace` of its rows' entities_json changed.
    """
    total = Cost()
    for n in sizes:
        new = new_rate * n / rebuilt  # the new pages of the 1/rebuilt days since the last rebuild
        # New pages come as meetings: P(the table got any) and how many when it did.
        p_new = 1 - math.exp(-new / PAGES_PER_MEETING)
        unchanged = catch_up(n, 0, 0, page, split_rows, sql_page)
        if inplace > 0:
            k = new + inplace * n
            changed = catch_up(n, k, buckets_hit(k), page, split_rows, sql_page)
            p = 1.0
        else:
            k = new / p_new if p_new else 0
            changed = catch_up(n, k, buckets_hit(k), page, split_rows, sql_page)
            p = p_new
        for name in Cost.__dataclass_fields__:
            value = (1 - rebuilt) * getattr(unchanged, name) + rebuilt * (
                p * getattr(changed, name) + (1 - p) * getattr(unchanged, name)
            )
            setattr(total, name, getattr(total, name) + value)
    return total


def hours(cost: Cost, public: bool, concurrency: int, rtt: float, mbit: float) -> float:
    """Wall hours: the public pace, or the larger of latency over concurrency and bandwidth."""
    if public:
        return cost.requests / PUBLIC_PER_MINUTE / 60
    latency = cost.requests * rtt + cost.server_s
    transfer = cost.bytes / (mbit * 1e6 / 8)
    return max(latency / concurrency, transfer) / 3600


def check(split_rows: int) -> None:
    """The model on bench/catchup.py's sites, next to what that benchmark measured."""
    bench = [35_000, 15_000, 6_000, 3_000, 2_000, 1_000]
    measured = {0.0: 6, 0.01: 56, 0.1: 122}
    print("model check on bench/catchup.py's six tables (removed = added = changed = rate/3):")
    for rate, got in measured.items():
        cost = Cost()
        for n in bench:
            k = rate * n
            fetch = 2 * k / 3  # added and changed in place
            cost += catch_up(n, fetch, buckets_hit(k), PAGE, split_rows, PAGE)
        print(
            f"  {rate:>4.0%}: model {cost.requests:5.0f} requests (digest {cost.digest:.0f},"
            f" listing {cost.listing:.0f}, by-id {cost.by_id:.0f}), {cost.bytes / 1e6:6.2f} MB;"
            f" measured {got}"
        )
    print()


def main() -> None:
    """Print the estimate's table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sites", type=int, default=2000)
    parser.add_argument("--rows", type=int, default=12_000_000)
    parser.add_argument("--zipf", type=float, default=0.8, help="size skew (0: all equal)")
    parser.add_argument("--agenda-share", type=float, default=0.6)
    parser.add_argument("--rebuilt", type=float, default=1 / 1.5, help="sites rebuilt a day")
    parser.add_argument("--split-rows", type=int, default=settings.CIVICBAND_DIGEST_SPLIT_ROWS)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rtt", type=float, default=0.08, help="seconds per request, network")
    parser.add_argument("--mbit", type=float, default=100.0, help="download bandwidth")
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    if args.check:
        check(args.split_rows)
    site_sizes = sites(args.sites, args.rows, args.zipf)
    sizes = tables(site_sizes, args.agenda_share)
    ordered = sorted(site_sizes)
    big = sum(n > args.split_rows for n in sizes)
    print(
        f"civic.band as assumed: {args.sites} sites, {sum(site_sizes):,} rows, sizes Zipf"
        f" {args.zipf} (largest {ordered[-1]:,}, 90th percentile"
        f" {ordered[int(0.9 * len(ordered))]:,}, median {ordered[len(ordered) // 2]:,},"
        f" smallest {ordered[0]:,}); {len(sizes)} tables, {big} above {args.split_rows:,} rows;"
        f" {args.rebuilt:.0%} of sites rebuilt a day; {BUCKETS_PER_LISTING} buckets per listing"
        f" request, {IDS_PER_BY_ID} ids per by-id request"
    )
    print(
        f"with the secret: {PAGE}-row pages, {args.concurrency} requests at once,"
        f" {args.rtt * 1000:.0f} ms network latency each plus server time, {args.mbit:g} Mbit/s;"
        f" without: {PUBLIC_PER_MINUTE} requests a minute, {PUBLIC_PAGE}-row pages,"
        " SQL answers still 1000 rows (if civic.band also caps those at 100: see last rows)"
    )
    print()
    print(
        f"{'':<44}{'requests':>10}{'GB':>8}{'hours':>8}{'requests':>11}{'hours':>8}"
        f"\n{'':<44}{'with the secret':>26}{'without':>19}"
    )
    scenarios = [
        ("full pass (pages + count + digest)", None, 0.0),
        ("catch-up, nothing changed", 0.0, 0.0),
        ("catch-up, 0.1 % new pages a day", 0.001, 0.0),
        ("catch-up, 1 % new pages a day", 0.01, 0.0),
        ("catch-up, 0.1 % new + every entities_json", 0.001, 1.0),
    ]
    for sql_page, suffix in ((PAGE, ""), (PUBLIC_PAGE, " [SQL 100]")):
        for label, rate, inplace in scenarios:
            if sql_page == PUBLIC_PAGE and rate is None:
                continue
            got = []
            for page in (PAGE, PUBLIC_PAGE):
                public = page == PUBLIC_PAGE
                answer = sql_page if public else PAGE
                if rate is None:
                    cost = Cost()
                    for n in sizes:
                        cost += full_pass(n, page, args.split_rows, answer)
                else:
                    cost = daily(sizes, rate, inplace, args.rebuilt, page, args.split_rows, answer)
                got.append((cost, hours(cost, public, args.concurrency, args.rtt, args.mbit)))
            (secret, h1), (public_cost, h2) = got
            with_secret = f"{secret.requests:>10,.0f}{secret.bytes / 1e9:>8.2f}{h1:>8.2f}"
            if suffix:
                with_secret = f"{'(as above)':>26}"
            print(f"{label + suffix:<44}{with_secret}{public_cost.requests:>11,.0f}{h2:>8.1f}")


if __name__ == "__main__":
    main()
