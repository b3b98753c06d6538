"""Time the catch-up's digest query in SQLite: directly and through Datasette 1.0a28.

Tables of realistic rows (--sizes, default 200,000 and 1,000,000; text --text-size characters,
entities_json and votes_json as tests/lookalike/data.py makes them), each queried with the SQL
the crawl sends (civicband.digest.digest_sql): the whole table in one query and in the 16 id
ranges of IdRange().split(); the index-only part (count and id sums: digest_sql without content
columns, so the fingerprint is the constant 0) against the whole digest (which reads every row
of the table for its content fingerprint). Each is timed warm (the file in the page cache;
median of --repeat runs) and cold (the file's pages dropped from the page cache first with
posix_fadvise(DONTNEED), which needs no privileges), with Python's sqlite3 and as an HTTP
request to a real Datasette 1.0a28 (the look-alike), against civic.band's 3 s SQL time limit.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import random
import sqlite3
import statistics
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import harness
from harness import MB

from civicband import datasette, digest
from civicband.source import COLUMNS

data = harness.data
LIMIT_S = 3.0  # civic.band's sql_time_limit_ms
TABLE = "agendas"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# ---- realistic rows, fast ------------------------------------------------------------------------


def generate(n: int, seed: str, text_size: int) -> Iterator[tuple]:
    """n rows shaped like data.make_rows's (ids are clerk's sha256 of the content, unique).

    The fast path: text is a slice of one long run of meeting prose at a random offset instead
    of words drawn one by one, so a million 2 KB rows take seconds rather than minutes.
    """
    rng = random.Random(seed)
    prose = data._text(rng, 4 * MB)
    meetings = [f"{m} {i}" if i else m for m in data.MEETINGS for i in range(40)]
    day = dt.date(2000, 1, 3)
    seen: set[str] = set()
    made = 0
    while made < n:
        day += dt.timedelta(days=rng.randint(0, 1))
        date = day.isoformat()
        for meeting in rng.sample(meetings, rng.randint(1, 6)):
            for page in range(1, min(rng.randint(1, 8), n - made) + 1):
                if rng.random() < 0.02:
                    text = ""
                else:
                    start = rng.randrange(len(prose) - text_size)
                    text = prose[start : start + text_size]
                key = {"kind": "agenda", "meeting": meeting, "date": date, "page": page}
                key["text"] = text
                rid = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
                if rid in seen:
                    continue
                seen.add(rid)
                made += 1
                yield (
                    rid,
                    meeting,
                    date,
                    page,
                    text,
                    data.page_image(TABLE, meeting, date, page),
                    data._entities(rng),
                    data._votes(rng),
                )
            if made >= n:
                return


def build(path: Path, n: int, text_size: int) -> None:
    """One site's meetings.db with n agendas rows (rowid in date order, as clerk inserts)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = OFF")
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("BEGIN")
        for table in data.TABLES:
            types = {"id": "TEXT PRIMARY KEY", "page": "INTEGER"}
            defs = ", ".join(f"{c} {types.get(c, 'TEXT')}" for c in data.COLUMNS)
            conn.execute(f"CREATE TABLE {table} ({defs})")
        marks = ", ".join("?" * len(data.COLUMNS))
        rows = generate(n, f"digest:{n}", text_size)
        while chunk := [row for _, row in zip(range(10_000), rows, strict=False)]:
            conn.executemany(f"INSERT INTO {TABLE} VALUES ({marks})", chunk)
        conn.execute("COMMIT")
    finally:
        conn.close()


# ---- the queries ---------------------------------------------------------------------------------


def queries() -> list[tuple[str, list[tuple[str, dict[str, str]]]]]:
    """(label, [(sql, params) ...]): whole table and 16 ranges, index-only and whole digest."""
    ranges = digest.IdRange().split()
    out = []
    for label, columns in (("index-only", ("id",)), ("with fingerprint", COLUMNS)):
        out.append((f"{label}, whole table", [digest.digest_sql(TABLE, columns, digest.IdRange())]))
        out.append((f"{label}, 16 ranges", [digest.digest_sql(TABLE, columns, r) for r in ranges]))
    return out


def rowid_ranges(path: Path) -> list[tuple[str, dict[str, str]]]:
    """A proposal, not what the crawl sends: the whole digest in 16 rowid ranges.

    The digest is a sum per bucket, so any partition of the rows gives the same totals when
    merged; rowid ranges read the table in storage order, where id ranges read it row by row
    through the index.
    """
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        top = int(conn.execute(f"select max(rowid) from {TABLE}").fetchone()[0] or 0)
    finally:
        conn.close()
    sql, params = digest.digest_sql(TABLE, COLUMNS, digest.IdRange())
    where = f"from {TABLE} where 1 limit -1)"
    assert where in sql, sql
    sql = sql.replace(
        where,
        f"from {TABLE} where rowid>cast(:rlo as integer) and rowid<=cast(:rhi as integer)"
        " limit -1)",
    )
    bounds = [top * i // 16 for i in range(17)]
    pairs = zip(bounds, bounds[1:], strict=False)
    return [(sql, {**params, "rlo": str(a), "rhi": str(b)}) for a, b in pairs]


def drop_cache(path: Path) -> None:
    """Drop the file's pages from the page cache (clean pages; no privileges needed)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def timed(run: Callable[[], int]) -> tuple[float, int]:
    """Seconds one call took, and the rows it counted."""
    start = time.perf_counter()
    n = run()
    return time.perf_counter() - start, n


def direct(path: Path) -> Callable[[str, dict[str, str]], int]:
    """Run a query with Python's sqlite3 on a fresh read-only connection; the rows counted."""

    def run(sql: str, params: dict[str, str]) -> int:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return sum(row[1] for row in conn.execute(sql, params))
        finally:
            conn.close()

    return run


def through_datasette(root_url: str) -> Callable[[str, dict[str, str]], int]:
    """Send a query as the crawl does (datasette.sql_url, 1.0 line); the rows counted."""

    def run(sql: str, params: dict[str, str]) -> int:
        url = datasette.sql_url(root_url, "1.0", sql, **params)
        headers = {"User-Agent": harness.USER_AGENT, "X-Service-Secret": harness.SECRET}
        with _OPENER.open(urllib.request.Request(url, headers=headers), timeout=600) as response:
            page = json.loads(response.read())
        assert page.get("ok") and not page.get("truncated"), str(page)[:300]
        return sum(int(row["n"]) for row in page["rows"])

    return run


def measure(
    path: Path, run: Callable[[str, dict[str, str]], int], parts: list, repeat: int, n: int
) -> dict[str, float]:
    """Warm (median of repeat) and cold (one run, cache dropped before each query) timings."""
    got: dict[str, float] = {}
    for kind in ("cold", "warm"):
        totals, longest = [], []
        for _ in range(1 if kind == "cold" else repeat):
            times = []
            counted = 0
            for sql, params in parts:
                if kind == "cold":
                    drop_cache(path)
                seconds, rows = timed(lambda sql=sql, params=params: run(sql, params))
                times.append(seconds)
                counted += rows
            assert counted == n, f"counted {counted} rows, expected {n}"
            totals.append(sum(times))
            longest.append(max(times))
        got[f"{kind} total"] = statistics.median(totals)
        got[f"{kind} max"] = statistics.median(longest)
    return got


def plan(path: Path, sql: str, params: dict[str, str]) -> str:
    """SQLite's query plan, on one line."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return "; ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, params))
    finally:
        conn.close()


def main() -> None:
    """Build the tables, start the look-alike, time every query both ways, print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="200000,1000000", help="comma-separated row counts")
    parser.add_argument("--text-size", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3, help="warm runs; the median is shown")
    parser.add_argument("--only", default="", help="only the queries whose label has this")
    parser.add_argument("--keep", type=Path, help="build the sites here and reuse them next time")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="civicband-digest-") as tmp:
        root = (args.keep or Path(tmp)) / "sites"
        for n in sizes:
            subdomain = f"d{n}.bench"
            path = data.db_path(root, subdomain)
            if not path.exists():
                started = time.monotonic()
                build(path.with_suffix(".tmp"), n, args.text_size)
                path.with_suffix(".tmp").replace(path)
                print(f"built {n} rows in {time.monotonic() - started:.0f} s", flush=True)
            # No time limit while measuring: the figures are compared with 3 s afterwards.
            data.write_meta(root, subdomain, {"sql_time_limit_ms": 600_000})
        print(
            f"text {args.text_size} chars; SQLite {sqlite3.sqlite_version} (Python's and"
            f" Datasette {harness.DATASETTE}'s env); warm = median of {args.repeat},"
            f" cold = page cache dropped before each query; code {harness.revision()}"
        )
        with harness.lookalike(root) as base_url:
            for n in sizes:
                report(root, base_url, n, args.repeat, args.only)


def report(root: Path, base_url: str, n: int, repeat: int, only: str = "") -> None:
    """Every query on one table, direct and through Datasette."""
    subdomain = f"d{n}.bench"
    path = data.db_path(root, subdomain)
    harness.warm(base_url, subdomain)
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    mean = conn.execute(
        f"select avg(length(id)+length(meeting)+length(date)+length(text)+length(page_image)"
        f"+ifnull(length(entities_json),0)+ifnull(length(votes_json),0)) from {TABLE}"
    ).fetchone()[0]
    conn.close()
    print(
        f"\n{n} rows, {path.stat().st_size / MB:.0f} MB file, {mean:.0f} characters a row;"
        " seconds (16 ranges: sum / slowest range)"
    )
    count_sql = [(f"select 'all' as bucket, count(*) as n from {TABLE}", {})]
    rows = [("count(*) alone, whole table", count_sql), *queries()]
    rows.append(("fp, 16 rowid ranges (proposal)", rowid_ranges(path)))
    rows = [(label, parts) for label, parts in rows if only in label]
    header = f"{'query':<32}{'direct warm':>16}{'direct cold':>16}{'Datasette warm':>18}"
    print(header + f"{'Datasette cold':>18}  within 3 s?")
    for label, parts in rows:
        got = [
            measure(path, direct(path), parts, repeat, n),
            measure(path, through_datasette(f"{base_url}/{subdomain}"), parts, repeat, n),
        ]
        cells = []
        for measured in got:
            for kind in ("warm", "cold"):
                total, slowest = measured[f"{kind} total"], measured[f"{kind} max"]
                cells.append(f"{total:.2f}" if len(parts) == 1 else f"{total:.2f} / {slowest:.2f}")
        worst = max(m["cold max"] for m in got)
        verdict = "yes" if worst < LIMIT_S else "NO"
        print(
            f"{label:<32}{cells[0]:>16}{cells[1]:>16}{cells[2]:>18}{cells[3]:>18}"
            f"  {verdict} (slowest request {worst:.2f} s)",
            flush=True,
        )
    for label, parts in rows:  # a middle range: the first also takes NULL ids
        print(f"  plan, {label}: {plan(path, *parts[len(parts) // 2])}")


if __name__ == "__main__":
    main()
