"""Estimate a daily catch-up of all of civic.band against a daily full pass: requests, bytes, hours.

Arithmetic only (no network), with the crawl's own cost model (civicband/cost.py: `catch_up`,
`full_pass`, `Limits`), so the estimate and the catch-up's choices rest on one model: a digest
of both tables per site, bisection of the differing buckets, new rows fetched whole and changed
ones for their values. Over an assumed civic.band (sizes Zipf-skewed, a share of the sites
rebuilt a day, new pages arriving as meetings). With the secret, hours are the larger of
latency over concurrency and bytes over bandwidth; without it, requests at civic.band's public
15 a minute with 100-row table pages. `--check` prints what the model predicts for
bench/catchup.py's measurements, to hold next to that benchmark's table.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable

from civicband import cost, datasette, settings
from civicband.cost import Limits, Prediction

URL_LIMIT = settings.URLLENGTH_LIMIT  # 8000: what one URL may carry (many proxies' limit)
ROOT = "https://oakland.ca.civic.band"  # a long-ish site name
PUBLIC_PER_MINUTE = 15  # civic.band's limit without the secret, per IP
PUBLIC_PAGE = 100  # rows per table page without the secret
PAGES_PER_MEETING = 4.5  # new pages arrive as meetings (data.py: 1-8 pages)
TARGET_PUBLIC_HOURS = 6.0  # the issue: a daily catch-up at 1 % new pages fits in 6 hours
# Server time, measured (bench/digest.py, bench/catchup.py; this machine): the whole digest a
# row (fingerprint 3: 7.3 s warm for 200,000 rows), a 1000-row page, any other small answer.
DIGEST_S_PER_ROW = 36e-6
PAGE_S = 0.075
SMALL_SQL_S = 0.02
# bench/catchup.py's sites, agendas and minutes.
BENCH_SITES = ((35_000, 15_000), (6_000, 3_000), (2_000, 1_000))


def longest_fit(build: Callable[[list[str]], str], items: list[str]) -> int:
    """How many items one request can carry within URL_LIMIT."""
    n = 1
    while n < len(items) and len(build(items[: n + 1])) <= URL_LIMIT:
        n += 1
    return n


def url_batches() -> tuple[Limits, str]:
    """Limits() with ids_per_request and prefixes_per_request as one URL of URL_LIMIT carries
    them, from civicband/bisect.py's SQL when it is there; else Limits()'s defaults."""
    try:
        from civicband import bisect  # noqa: PLC0415 - the catch-up's bisection, when present
        from civicband.reads import COLUMNS  # noqa: PLC0415

        def fetch_url(ids: list[str]) -> str:
            sql = bisect.fetch_sql([("agenda", "agendas", True)], COLUMNS)
            return datasette.sql_url(ROOT, "1.0", sql, agenda_w=bisect.ID_SEPARATOR.join(ids))

        tables = {"agenda": "agendas", "minutes": "minutes"}

        def bisect_url(prefixes: list[str]) -> str:  # 3-digit buckets, asked 4 deep
            params = bisect.Ask(4, tuple(prefixes)).params("minutes")
            params.update(bisect.Ask(4, ("000",)).params("agenda"))
            return datasette.sql_url(ROOT, "1.0", bisect.bisect_sql(tables, COLUMNS), **params)

        ids = longest_fit(fetch_url, [f"{i:012x}" for i in range(2000)])
        prefixes = longest_fit(bisect_url, [f"{i:03x}" for i in range(4096)])
    except ImportError:
        return Limits(), "Limits() defaults: no civicband/bisect.py yet"
    except (AttributeError, TypeError) as error:  # its SQL builders changed shape
        return Limits(), f"Limits() defaults: civicband/bisect.py's SQL not usable ({error})"
    return (
        dataclasses.replace(Limits(), ids_per_request=ids, prefixes_per_request=prefixes),
        "computed from civicband/bisect.py's SQL",
    )


def sites(count: int, total: int, exponent: float) -> list[int]:
    """Site sizes: Zipf-like (size of the i-th largest ~ 1/i^exponent), summing to total."""
    weights = [1 / (i + 1) ** exponent for i in range(count)]
    scale = total / sum(weights)
    return [max(1, round(w * scale)) for w in weights]


@dataclasses.dataclass
class Day:
    """Expected requests, bytes and server seconds of a daily run."""

    requests: float = 0.0
    bytes: float = 0.0
    server_s: float = 0.0

    def add(self, weight: float, got: Prediction, server_s: float) -> None:
        """Count a prediction with its probability."""
        self.requests += weight * got.requests
        self.bytes += weight * got.bytes
        self.server_s += weight * server_s

    def hours(self, public: bool, concurrency: int, rtt: float, mbit: float) -> float:
        """Wall hours: the public pace, or the larger of latency over concurrency and bandwidth."""
        if public:
            return self.requests / PUBLIC_PER_MINUTE / 60
        latency = self.requests * rtt + self.server_s
        return max(latency / concurrency, self.bytes / (mbit * 1e6 / 8)) / 3600


def split(size: float, share: float) -> tuple[float, float]:
    """A site's rows as (agendas, minutes)."""
    return size * share, size * (1 - share)


def catch_up_server_s(size: float, got: Prediction) -> float:
    """A catch-up's server time: the digest reads every row, the rest are small answers."""
    return size * DIGEST_S_PER_ROW + max(got.requests - 1, 0) * SMALL_SQL_S


def full_pass(site_sizes: list[int], share: float, limits: Limits) -> Day:
    """A full pass of every table of every site (its pages, then count and digest)."""
    day = Day()
    for size in site_sizes:
        for rows in split(size, share):
            got = cost.full_pass(rows, limits)
            pages = math.ceil(rows / limits.page_size)
            day.add(1.0, got, pages * PAGE_S * limits.page_size / 1000 + rows * DIGEST_S_PER_ROW)
    return day


def daily(
    site_sizes: list[int],
    share: float,
    new_rate: float,
    inplace: float,
    rebuilt: float,
    limits: Limits,
) -> Day:
    """Expected cost of one day's catch-up of every site.

    A share `rebuilt` of the sites was rebuilt since yesterday (once per 1.5 days: 2/3); a
    rebuilt site has new pages for the days since its last rebuild (new_rate a day, arriving as
    meetings: with some probability none at all) and `inplace` of its rows' entities_json
    changed under the same id.
    """
    day = Day()
    for size in site_sizes:
        agendas, minutes = split(size, share)
        unchanged = cost.catch_up([(agendas, 0, 0), (minutes, 0, 0)], limits)
        day.add(1 - rebuilt, unchanged, catch_up_server_s(size, unchanged))
        new = new_rate * size / rebuilt  # the new pages of the 1/rebuilt days since the last
        if inplace > 0:
            p = 1.0
        else:  # new pages come as meetings: P(the site got any) and how many when it did
            p = 1 - math.exp(-new / PAGES_PER_MEETING)
            new = new / p if p else 0.0
        changed = cost.catch_up(
            [
                (agendas + new * share, new * share, inplace * agendas),
                (minutes + new * (1 - share), new * (1 - share), inplace * minutes),
            ],
            limits,
        )
        day.add(rebuilt * p, changed, catch_up_server_s(size, changed))
        day.add(rebuilt * (1 - p), unchanged, catch_up_server_s(size, unchanged))
    return day


def bench_prediction(kind: str, rate: float, scale: float, limits: Limits) -> Prediction:
    """What the model predicts for one of bench/catchup.py's measurements (every site)."""
    got = Prediction()
    for a, m in BENCH_SITES:
        tables, fetched = [], 0.0
        for rows in (round(a * scale), round(m * scale)):
            k = rows if kind == "all-entities" else round(rate * rows)
            if kind == "new":
                tables.append((rows + k, k, 0))
            elif kind == "removed":  # found as new ones are, nothing to fetch
                tables.append((rows, k, 0))
                if k:
                    fetched += math.ceil(k / min(limits.ids_per_request, limits.max_rows))
            elif kind in ("inplace", "all-entities"):
                tables.append((rows, 0, k))
            else:
                tables.append((rows, 0, 0))
        lim = dataclasses.replace(limits, row_bytes=0) if kind == "removed" else limits
        site = cost.catch_up(tables, lim)
        got.add(site.requests - fetched, site.bytes)
    return got


def check(limits: Limits, scale: float) -> None:
    """The model on bench/catchup.py's sites and measurements, to hold next to its table."""
    full = Prediction()
    for a, m in BENCH_SITES:
        for rows in (round(a * scale), round(m * scale)):
            part = cost.full_pass(rows, limits)
            full.add(part.requests, part.bytes)
    print(
        f"model of bench/catchup.py's measurements (--scale {scale:g}); full pass"
        f" {full.requests:.0f} requests, {full.bytes / 2**20:.1f} MB (new and removed rows"
        " change it a little):"
    )
    rows = [("unchanged", 0.0)]
    rows += [(k, r) for k in ("new", "removed", "inplace") for r in (0.001, 0.01, 0.1)]
    rows.append(("all-entities", 1.0))
    for kind, rate in rows:
        got = bench_prediction(kind, rate, scale, limits)
        label = kind if kind in ("unchanged", "all-entities") else f"{kind} {rate:.1%}"
        print(
            f"  {label:<16}{got.requests:>6.0f} requests ({got.requests / full.requests:7.2%})"
            f"{got.bytes / 2**20:>9.2f} MB ({got.bytes / full.bytes:7.2%})"
        )
    print()


def main() -> None:
    """Print the estimate's table and the target."""
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
    parser.add_argument("--check-scale", type=float, default=1.0, help="catchup.py's --scale")
    args = parser.parse_args()
    batches, origin = url_batches()
    secret = dataclasses.replace(batches, split_rows=args.split_rows)
    public = dataclasses.replace(secret, request_bytes=4 * 1024 * 1024, page_size=PUBLIC_PAGE)
    public_sql100 = dataclasses.replace(public, max_rows=PUBLIC_PAGE)
    if args.check:
        check(secret, args.check_scale)
    site_sizes = sites(args.sites, args.rows, args.zipf)
    ordered = sorted(site_sizes)
    print(
        f"civic.band as assumed: {args.sites} sites, {sum(site_sizes):,} rows, sizes Zipf"
        f" {args.zipf} (largest {ordered[-1]:,}, 90th percentile"
        f" {ordered[int(0.9 * len(ordered))]:,}, median {ordered[len(ordered) // 2]:,},"
        f" smallest {ordered[0]:,}); agendas {args.agenda_share:.0%}; {args.rebuilt:.0%} of"
        f" sites rebuilt a day; new pages as meetings of {PAGES_PER_MEETING} pages"
    )
    print(
        f"model: civicband/cost.py; {secret.ids_per_request} ids and"
        f" {secret.prefixes_per_request} buckets a request ({origin}; URL limit {URL_LIMIT})"
    )
    print(
        f"with the secret: Limits() ({secret.page_size}-row pages, {secret.max_rows}-row"
        f" answers, a request worth {secret.request_bytes // 1024} KB), {args.concurrency}"
        f" requests at once, {args.rtt * 1000:.0f} ms network latency each plus server time,"
        f" {args.mbit:g} Mbit/s; without: {PUBLIC_PER_MINUTE} requests a minute,"
        f" {PUBLIC_PAGE}-row pages, a request worth {public.request_bytes // 2**20} MB,"
        f" SQL answers still {public.max_rows} rows ([SQL 100]: if civic.band capped those too)"
    )
    print()
    print(
        f"{'daily run':<46}{'requests':>10}{'GB':>8}{'hours':>8}{'requests':>11}{'GB':>8}"
        f"{'hours':>8}\n{'':<46}{'with the secret':>26}{'without':>27}"
    )
    scenarios = [
        ("full pass (pages, count and digest)", None, 0.0),
        ("catch-up, nothing changed", 0.0, 0.0),
        ("catch-up, 0.1 % new pages a day", 0.001, 0.0),
        ("catch-up, 1 % new pages a day", 0.01, 0.0),
        ("catch-up, 0.1 % new + every entities_json", 0.001, 1.0),
    ]
    got: dict[tuple[str, bool], Day] = {}
    for label, rate, inplace in scenarios:
        line = f"{label:<46}"
        for limits, is_public in ((secret, False), (public, True)):
            if rate is None:
                day = full_pass(site_sizes, args.agenda_share, limits)
            else:
                day = daily(site_sizes, args.agenda_share, rate, inplace, args.rebuilt, limits)
            got[label, is_public] = day
            h = day.hours(is_public, args.concurrency, args.rtt, args.mbit)
            line += f"{day.requests:>10,.0f}{day.bytes / 1e9:>8.2f}{h:>8.2f}"
            line += " " if not is_public else ""
        print(line)
    for label, rate, inplace in scenarios[1:4:2]:
        day = daily(site_sizes, args.agenda_share, rate, inplace, args.rebuilt, public_sql100)
        h = day.hours(True, args.concurrency, args.rtt, args.mbit)
        print(
            f"{label + ' [SQL 100]':<46}{'':>27}{day.requests:>10,.0f}{day.bytes / 1e9:>8.2f}"
            f"{h:>8.2f}"
        )
    key = "catch-up, 1 % new pages a day"
    public_hours = got[key, True].hours(True, args.concurrency, args.rtt, args.mbit)
    full_public = got[scenarios[0][0], True]
    for is_public, name in ((False, "with the secret"), (True, "without")):
        cu, full = got[key, is_public], got[scenarios[0][0], is_public]
        print(
            f"\n1 % new pages against a full pass, {name}: requests"
            f" {cu.requests / full.requests:.2%}, bytes {cu.bytes / full.bytes:.2%}",
            end="",
        )
    print(
        f"\n\ntarget: a daily catch-up at 1 % new pages fits in {TARGET_PUBLIC_HOURS:g} hours"
        f" without a secret: {public_hours:.2f} hours (full pass"
        f" {full_public.hours(True, args.concurrency, args.rtt, args.mbit):.1f}):"
        f" {'PASS' if public_hours <= TARGET_PUBLIC_HOURS else 'FAIL'}"
    )


if __name__ == "__main__":
    main()
