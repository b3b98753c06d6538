"""Catch-up against full pass: requests, bytes, time after 0 %, 1 %, 10 % change at the source.

A few sites (one large, two smaller; agendas and minutes) are backfilled once; then, for each
change rate, the source is changed (rows removed, rows added, rows changed in place in
entities_json only, same id) and the default crawl (a catch-up) and a `-a full=true` pass each
run on their own copy of the same mirror (CREATE DATABASE ... TEMPLATE). The look-alike's
request log gives each run's requests and response bytes; after every run the mirror is compared
with the source, all eight columns of every row.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import sqlite3
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import harness
import psycopg
from harness import MB, Run

from civicband import digest

data = harness.data
TABLES = {"agendas": "agenda", "minutes": "minutes"}
COLUMNS = data.COLUMNS
# (subdomain, agendas, minutes): one large site and two smaller ones.
SITES = (
    ("large.bench", 35_000, 15_000),
    ("medium.bench", 6_000, 3_000),
    ("small.bench", 2_000, 1_000),
)


@dataclass
class Measured:
    """One crawl: its process, what the look-alike saw, what the crawl counted, the check."""

    run: Run
    requests: int
    bytes: int
    span: float  # first request's arrival to the last answer's end, seconds
    kinds: Counter = field(default_factory=Counter)
    kind_bytes: Counter = field(default_factory=Counter)
    kind_seconds: Counter = field(default_factory=Counter)  # arrival to answer's end, summed
    statuses: Counter = field(default_factory=Counter)
    stats: dict[str, Any] = field(default_factory=dict)
    check: str = ""
    equal: bool = False


def kind_of(entry: dict[str, Any]) -> str:
    """What a logged request was: a table page, or which SQL question."""
    path, query = entry["path"], entry["query"]
    if path.endswith(("/agendas.json", "/minutes.json")):
        return "page"
    if "/-/query.json" in path or "sql=" in query:
        if "group+by+bucket" in query or "group%20by%20bucket" in query:
            return "digest"
        if "json_each%28%3Abuckets" in query or "json_each(:buckets" in query:
            return "listing"
        if "json_each%28%3Aids" in query or "json_each(:ids" in query:
            return "by-id"
        if "civicband_rowid" in query:
            return "other-rows"
        if "count" in query:
            return "count"
        return "sql"
    if path.endswith("/meetings.json"):
        return "probe"
    return "other"


def measure_crawl(
    server: Any, site_url: str, subdomains: str, url: str, logs: Path, label: str, full: bool
) -> Measured:
    """One `scrapy crawl civicband` of every site, both types, on a cleared look-alike log."""
    log = logs / f"{label}-{time.monotonic_ns()}.log"
    stats_file = log.with_suffix(".stats.json")
    extra = ("-s", f"CIVICBAND_STATS_FILE={stats_file}")
    if full:
        extra = (*extra, "-a", "full=true")
    server.control("DELETE", "requests")
    run = harness.crawl(site_url, subdomains, url, log, document_type="both", extra=extra)
    entries = server.control("GET", "requests")
    if run.returncode != 0:
        raise SystemExit(f"{label} exited {run.returncode}:\n{harness.tail(log, 40)}")
    got = Measured(run, len(entries), sum(e["bytes"] for e in entries), 0.0)
    if entries:
        got.span = max(e["done"] or e["time"] for e in entries) - min(e["time"] for e in entries)
    for entry in entries:
        kind = kind_of(entry)
        got.kinds[kind] += 1
        got.kind_bytes[kind] += entry["bytes"]
        got.kind_seconds[kind] += (entry["done"] or entry["time"]) - entry["time"]
        got.statuses[entry["status"]] += 1
    if stats_file.exists():
        got.stats = json.loads(stats_file.read_text())
    return got


# ---- the source and the mirror compared ---------------------------------------------------------


def source_rows(root: Path, subdomain: str, table: str) -> dict[str, tuple]:
    """Every row of a site's table, by id, as the eight columns."""
    conn = sqlite3.connect(f"file:{data.db_path(root, subdomain)}?mode=ro", uri=True)
    try:
        cols = ", ".join(COLUMNS)
        return {r[0]: tuple(r) for r in conn.execute(f"SELECT {cols} FROM {table}")}
    finally:
        conn.close()


MIRROR_SQL = (
    "SELECT p.id, d.meeting_name, to_char(d.meeting_date, 'YYYY-MM-DD'), p.page_number, p.text,"
    " p.page_image, p.entities_json, p.votes_json FROM meeting_pages p"
    " JOIN meeting_documents d ON d.id = p.document_id"
    " WHERE p.subdomain = %s AND p.document_type = %s"
)


def compare(root: Path, url: str) -> tuple[bool, str]:
    """Whether the mirror holds exactly the source's rows, every column; a one-line account."""
    rows = missing = extra = differing = rejected = 0
    columns: Counter = Counter()
    with psycopg.connect(url) as conn:
        for subdomain, *_ in SITES:
            for table, kind in TABLES.items():
                source = source_rows(root, subdomain, table)
                mirror = {r[0]: tuple(r) for r in conn.execute(MIRROR_SQL, (subdomain, kind))}
                rows += len(source)
                missing += len(source.keys() - mirror.keys())
                extra += len(mirror.keys() - source.keys())
                for key in source.keys() & mirror.keys():
                    if source[key] != mirror[key]:
                        differing += 1
                        for name, a, b in zip(COLUMNS, source[key], mirror[key], strict=True):
                            if a != b:
                                columns[name] += 1
        found = conn.execute("SELECT count(*) FROM rejected_rows").fetchone()
        rejected = int(found[0]) if found else 0
    equal = not (missing or extra or differing or rejected)
    if equal:
        return True, f"equal: {rows} rows, all 8 columns"
    what = ", ".join(f"{c} {n}" for c, n in columns.most_common())
    return False, (
        f"DIFFERENT: {rows} rows at the source, {missing} missing, {extra} extra,"
        f" {differing} differing ({what or '-'}), {rejected} rejected"
    )


# ---- changes at the source ----------------------------------------------------------------------


def new_entities(rng: random.Random, old: str | None) -> str | None:
    """Entities re-extracted: the shape data.py makes, but not the old value."""
    while True:
        if rng.random() < 0.1:
            value = None
        else:
            persons = sorted(rng.sample(data.NAMES, rng.randint(0, 3)))
            value = json.dumps({"persons": persons, "orgs": [], "locations": []})
        if value != old:
            return value


def blind_spot(samples: int = 100_000) -> float:
    """Share of entities re-extractions (new value != old) that keep the same fingerprint."""
    rng = random.Random("blind-spot")
    same = 0
    for _ in range(samples):
        old = new_entities(rng, "")  # any value, NULL included, as data.py makes them
        new = new_entities(rng, old)
        same += digest.value_fp({"entities_json": old}) == digest.value_fp({"entities_json": new})
    return same / samples


def fp(row: tuple) -> int:
    """The content fingerprint of a source row (columns in COLUMNS order)."""
    return digest.content_fp(dict(zip(COLUMNS, row, strict=True)))


def apply_changes(root: Path, rate: float, text_size: int, round_no: int) -> dict[str, int]:
    """Remove, add and change in place (entities_json) a third of rate x rows each, per table."""
    done = Counter()
    for subdomain, *_ in SITES:
        for table in TABLES:
            rows = source_rows(root, subdomain, table)
            k = round(rate * len(rows))
            if not k:
                continue
            rng = random.Random(f"{subdomain}:{table}:{rate}:{round_no}")
            removed_n, added_n = k // 3, k // 3
            changed_n = k - removed_n - added_n
            chosen = rng.sample(sorted(rows), removed_n + changed_n)
            removed, changed = chosen[:removed_n], chosen[removed_n:]
            start = (dt.date(2026, 1, 5) + dt.timedelta(days=400 * round_no)).isoformat()
            added = data.make_rows(
                table,
                added_n,
                seed=f"new:{subdomain}:{round_no}",
                text_size=text_size,
                start_date=start,
            )
            assert not {r["id"] for r in added} & rows.keys(), "new ids collide"
            replaced = []
            for key in changed:
                row = dict(zip(COLUMNS, rows[key], strict=True))
                row["entities_json"] = new_entities(rng, row["entities_json"])
                if digest.content_fp(row) == fp(rows[key]):
                    done["invisible"] += 1  # the fingerprint cannot see this change
                replaced.append(row)
            data.delete_rows(root, subdomain, table, [*removed, *changed])
            data.add_rows(root, subdomain, table, [*added, *replaced])
            done["removed"] += len(removed)
            done["added"] += len(added)
            done["changed"] += len(replaced)
    return done


# ---- report ------------------------------------------------------------------------------------


def line(label: str, m: Measured) -> str:
    """One row of the results table, then its requests by kind (count, MB, mean ms at the
    server: arrival to the answer's last byte handed over) and odd statuses."""
    kinds = ", ".join(
        f"{k} {n} ({m.kind_bytes[k] / MB:.2f}, {m.kind_seconds[k] / n * 1000:.0f})"
        for k, n in sorted(m.kinds.items())
    )
    odd = ", ".join(f"HTTP {s} x{n}" for s, n in sorted(m.statuses.items(), key=str) if s != 200)
    return (
        f"  {label:<10}{m.requests:>9}{m.bytes / MB:>10.2f}{m.run.wall:>9.2f}{m.span:>9.2f}"
        f"   {kinds}{'; ' + odd if odd else ''}"
    )


def ratio(a: float, b: float) -> str:
    """a / b, or - when b is zero."""
    return f"{a / b:.4f}" if b else "-"


def catchup_stats(stats: dict[str, Any]) -> str:
    """The crawl's own catch-up counters."""
    keys = ("buckets", "listed", "fetched", "created", "updated", "deleted", "full_passes")
    got = [f"{k} {stats.get('civicband/catchup/' + k, 0)}" for k in keys]
    got.append(f"digest requests {stats.get('civicband/digest/requests', 0)}")
    return ", ".join(got)


def main() -> None:
    """Backfill, then per change rate: change the source, catch up and full pass on copies."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rates", default="0,0.01,0.1", help="comma-separated change rates")
    parser.add_argument("--text-size", type=int, default=2000)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every site's rows")
    parser.add_argument(
        "--time-limit-ms", type=int, default=3000, help="sites' sql_time_limit_ms (civic.band: 3 s)"
    )
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    global SITES
    SITES = tuple((s, round(a * args.scale), round(m * args.scale)) for s, a, m in SITES)
    harness.use_bytecode_cache()
    subdomains = ",".join(s for s, *_ in SITES)
    with tempfile.TemporaryDirectory(prefix="civicband-catchup-") as tmp:
        root, logs = Path(tmp) / "sites", Path(tmp) / "logs"
        logs.mkdir()
        started = time.monotonic()
        total = 0
        for subdomain, agendas, minutes in SITES:
            data.write_meta(root, subdomain, {"sql_time_limit_ms": args.time_limit_ms})
            data.write_site(
                root,
                subdomain,
                data.make_rows("agendas", agendas, seed=subdomain, text_size=args.text_size),
                data.make_rows("minutes", minutes, seed=subdomain, text_size=args.text_size),
            )
            total += agendas + minutes
        sites = ", ".join(f"{s} {a}+{m}" for s, a, m in SITES)
        print(
            f"sites (agendas+minutes): {sites}; {total} rows, text {args.text_size} chars;"
            f" generated in {time.monotonic() - started:.0f} s; Datasette {harness.DATASETTE},"
            f" sql_time_limit_ms {args.time_limit_ms};"
            f" code {harness.revision()}"
        )
        with (
            harness.lookalike_server(root) as server,
            harness.postgres(Path(tmp) / "pg") as admin,
        ):
            for subdomain, *_ in SITES:
                harness.warm(server.base_url, subdomain)
            # civic.band's limits for callers without the secret: proves the crawl is trusted.
            server.control(
                "POST", "ratelimit", {"per_minute": 15, "secret": harness.SECRET, "page_cap": True}
            )
            site_url = server.base_url + "/{subdomain}"
            with harness.fresh_database(admin, "backfill") as base:
                backfill = measure_crawl(
                    server, site_url, subdomains, base, logs, "backfill", False
                )
                backfill.equal, backfill.check = compare(root, base)
                print(
                    f"{'':<12}{'requests':>9}{'MB':>10}{'wall s':>9}{'span s':>9}"
                    "   requests by kind (MB, mean ms at the server)"
                )
                print(line("backfill", backfill))
                print(f"  {'':<10}mirror {backfill.check}", flush=True)
                results = run_rates(
                    server, root, admin, base, site_url, subdomains, logs, rates, args
                )
        report(results)
    print(
        f"\nfingerprint blind spot: {blind_spot():.2%} of random entities_json re-extractions"
        " (new value != old, data.py's shape) keep the row's content fingerprint"
    )


def run_rates(
    server: Any,
    root: Path,
    admin: str,
    base: str,
    site_url: str,
    subdomains: str,
    logs: Path,
    rates: list[float],
    args: argparse.Namespace,
) -> list[tuple[float, dict[str, int], Measured, Measured]]:
    """Per rate: change the source, then a catch-up and a full pass on copies of the mirror."""
    results = []
    for i, rate in enumerate(rates):
        changes = apply_changes(root, rate, args.text_size, i + 1)
        print(
            f"\nchange {rate:.0%}: removed {changes['removed']}, added {changes['added']},"
            f" changed in place {changes['changed']} (entities_json; {changes['invisible']}"
            " of them leave the content fingerprint unchanged)",
            flush=True,
        )
        measured: dict[str, Measured] = {}
        order = ["catch-up", "full"] if i % 2 == 0 else ["full", "catch-up"]
        with (
            harness.cloned_database(admin, base, "catchup") as cu_url,
            harness.cloned_database(admin, base, "full") as full_url,
        ):
            urls = {"catch-up": cu_url, "full": full_url}
            for label in order:
                m = measure_crawl(
                    server, site_url, subdomains, urls[label], logs, label, label == "full"
                )
                m.equal, m.check = compare(root, urls[label])
                measured[label] = m
                print(line(label, m))
                print(f"  {'':<10}mirror {m.check}", flush=True)
            print(f"  {'':<10}catch-up counters: {catchup_stats(measured['catch-up'].stats)}")
            # The next rate starts from a mirror equal to the source: the catch-up's if it is.
            keep = "catch-up" if measured["catch-up"].equal else "full"
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE "{harness.dbname(base)}" WITH (FORCE)')
                conn.execute(
                    f'CREATE DATABASE "{harness.dbname(base)}"'
                    f' TEMPLATE "{harness.dbname(urls[keep])}"'
                )
        results.append((rate, changes, measured["catch-up"], measured["full"]))
    return results


def report(results: list[tuple[float, dict[str, int], Measured, Measured]]) -> None:
    """The ratios catch-up / full pass."""
    print()
    print(
        f"{'change':>7}{'requests':>18}{'ratio':>8}{'MB':>18}{'ratio':>8}{'wall s':>16}"
        f"{'ratio':>8}{'span s':>16}{'ratio':>8}  mirror = source"
    )
    print(
        f"{'':>7}{'catch-up / full':>18}{'':>8}{'catch-up / full':>18}{'':>8}"
        f"{'catch-up/full':>16}{'':>8}{'catch-up/full':>16}"
    )
    for rate, _, cu, full in results:
        print(
            f"{rate:>7.0%}{cu.requests:>9} /{full.requests:>6}"
            f"{ratio(cu.requests, full.requests):>10}"
            f"{cu.bytes / MB:>9.2f} /{full.bytes / MB:>7.1f}{ratio(cu.bytes, full.bytes):>9}"
            f"{cu.run.wall:>7.2f} /{full.run.wall:>6.2f}{ratio(cu.run.wall, full.run.wall):>9}"
            f"{cu.span:>7.2f} /{full.span:>6.2f}{ratio(cu.span, full.span):>9}"
            f"  {'yes' if cu.equal else 'NO'} / {'yes' if full.equal else 'NO'}"
        )


if __name__ == "__main__":
    main()
