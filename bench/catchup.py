"""Catch-up against full pass, one kind of change at a time: requests, bytes, time.

A few sites (one large, two smaller; agendas and minutes) are generated once and kept pristine,
and backfilled once. Each measurement then starts from those: the served sites are restored from
the pristine files (SQLite's backup, into the files the look-alike has open), one kind of change
is made at one rate (new pages, removed pages, or entities_json re-extracted in place under the
same id), and the default crawl (a catch-up) and a `-a full=true` pass each run on their own copy
of the backfilled mirror (CREATE DATABASE ... TEMPLATE). The look-alike's request log gives each
run's requests and response bytes, by kind; after every run the mirror is compared with the
source, all eight columns of every row. Then the ratios catch-up / full pass, and the issue's
targets ("Catch-up at the cost of change") with PASS or FAIL.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import re
import shutil
import sqlite3
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

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
# One kind of change per measurement.
KINDS = {
    "new": "new pages (new meetings after the newest date)",
    "removed": "pages removed",
    "inplace": "entities_json re-extracted in place (same id)",
}
ALL_ENTITIES = "all-entities"

# The targets (catch-up / full pass).
TARGET_REQUESTS_AT_1 = 0.15
TARGET_BYTES_AT_1 = 0.015
TARGET_BYTES_ALL_ENTITIES = 0.30


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
    per_site: Counter = field(default_factory=Counter)  # requests by subdomain
    stats: dict[str, Any] = field(default_factory=dict)
    check: str = ""
    equal: bool = False


@dataclass
class Measurement:
    """One kind of change at one rate: what was changed, the catch-up and the full pass."""

    kind: str  # "unchanged", a key of KINDS, or ALL_ENTITIES
    rate: float
    changes: Counter
    catch_up: Measured
    full: Measured


# ---- what each request was ----------------------------------------------------------------------


def kind_of_sql(sql: str, params: dict[str, list[str]]) -> str:
    """What a SQL question does, from the SQL the crawl sends and its parameters."""
    sql = " ".join(sql.lower().split())
    if re.search(r"\bas packed\b", sql):
        return "bisect"  # sub-bucket digests or listings, packed a bucket a row
    if re.search(r"\bgroup by tag,bucket\b", sql):
        return "digest"
    if "civicband_rowid" in sql:
        return "other-rows"
    if "select s.id id," in sql:
        return "values-range"  # the values of whole buckets (or of every row: exact=true)
    whole = any(k.endswith("_w") for k in params)
    values = any(k.endswith("_v") for k in params)
    if whole or values:
        return {(True, False): "by-id", (False, True): "values", (True, True): "by-id+values"}[
            (whole, values)
        ]
    if "count(" in sql:
        return "count"
    return "sql"


def kind_of(entry: dict[str, Any]) -> str:
    """What a logged request was: a table page, or which SQL question (decoded and read)."""
    path = entry["path"]
    if path.endswith(("/agendas.json", "/minutes.json")):
        return "page"
    params = parse_qs(entry["query"], keep_blank_values=True)
    sql = params.pop("sql", None)
    if sql:
        return kind_of_sql(sql[0], params)
    if path.endswith(("/meetings.json", "/-/query.json")):
        return "probe"
    return "other"


def site_of(entry: dict[str, Any]) -> str:
    """The subdomain a logged request went to (the look-alike serves /<subdomain>/...)."""
    return entry["path"].lstrip("/").partition("/")[0]


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
        got.per_site[site_of(entry)] += 1
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


# ---- the source: pristine files, restored before each measurement, then one change -------------


def keep_pristine(root: Path, pristine: Path) -> None:
    """Copy every generated site (nobody has it open yet) to `pristine`."""
    for subdomain, *_ in SITES:
        target = data.db_path(pristine, subdomain)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(data.db_path(root, subdomain), target)


def restore(root: Path, pristine: Path) -> None:
    """Make every served site its pristine self again, through SQLite (the look-alike's
    Datasette keeps the files open: replacing them would leave it reading the old ones)."""
    for subdomain, *_ in SITES:
        source = sqlite3.connect(f"file:{data.db_path(pristine, subdomain)}?mode=ro", uri=True)
        target = sqlite3.connect(data.db_path(root, subdomain), timeout=30)
        try:
            target.execute("PRAGMA busy_timeout = 30000")
            source.backup(target)
        finally:
            target.close()
            source.close()


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


def update_entities(root: Path, subdomain: str, table: str, values: dict[str, str | None]) -> None:
    """UPDATE entities_json in place, by id: the row keeps its id and its rowid."""
    conn = sqlite3.connect(data.db_path(root, subdomain), timeout=30, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            f'UPDATE "{table}" SET entities_json = ? WHERE id = ?',
            [(value, key) for key, value in values.items()],
        )
        conn.execute("COMMIT")
    finally:
        conn.close()


def apply_change(root: Path, kind: str, rate: float, text_size: int) -> Counter:
    """One kind of change at one rate, per table (ALL_ENTITIES: every row's entities_json)."""
    done: Counter = Counter()
    for subdomain, *_ in SITES:
        for table in TABLES:
            rows = source_rows(root, subdomain, table)
            k = len(rows) if kind == ALL_ENTITIES else round(rate * len(rows))
            if not k:
                continue
            rng = random.Random(f"{subdomain}:{table}:{kind}:{rate}")
            if kind == "new":
                newest = max(dt.date.fromisoformat(r[2]) for r in rows.values())
                added = data.make_rows(
                    table,
                    k,
                    seed=f"new:{subdomain}:{rate}",
                    text_size=text_size,
                    start_date=(newest + dt.timedelta(days=1)).isoformat(),
                )
                assert not {r["id"] for r in added} & rows.keys(), "new ids collide"
                data.add_rows(root, subdomain, table, added)
                done["added"] += len(added)
            elif kind == "removed":
                done["removed"] += data.delete_rows(
                    root, subdomain, table, rng.sample(sorted(rows), k)
                )
            else:
                chosen = sorted(rows) if kind == ALL_ENTITIES else rng.sample(sorted(rows), k)
                values = {}
                for key in chosen:
                    row = dict(zip(COLUMNS, rows[key], strict=True))
                    before = digest.content_fp(row)
                    row["entities_json"] = new_entities(rng, row["entities_json"])
                    if digest.content_fp(row) == before:
                        done["invisible"] += 1  # the fingerprint cannot see this change
                    values[key] = row["entities_json"]
                update_entities(root, subdomain, table, values)
                done["changed"] += len(values)
    return done


def describe(kind: str, rate: float, changes: Counter) -> str:
    """What a measurement changed, in words."""
    if kind == "unchanged":
        return "no change"
    what = {"new": "added", "removed": "removed", "inplace": "changed", ALL_ENTITIES: "changed"}
    n = changes[what[kind]]
    name = "every entities_json re-extracted in place" if kind == ALL_ENTITIES else KINDS[kind]
    text = f"{name}: {n} rows" + ("" if kind == ALL_ENTITIES else f" ({rate:.1%})")
    if kind in ("inplace", ALL_ENTITIES):
        text += f", {changes['invisible']} of them leave the content fingerprint unchanged"
    return text


# ---- report ------------------------------------------------------------------------------------


def line(label: str, m: Measured) -> str:
    """One run: requests, MB, wall and span, then its requests by kind (count, MB, mean ms at
    the server: arrival to the answer's last byte handed over) and odd statuses."""
    kinds = ", ".join(
        f"{k} {n} ({m.kind_bytes[k] / MB:.2f}, {m.kind_seconds[k] / n * 1000:.0f})"
        for k, n in sorted(m.kinds.items())
    )
    odd = ", ".join(f"HTTP {s} x{n}" for s, n in sorted(m.statuses.items(), key=str) if s != 200)
    return (
        f"  {label:<10}{m.requests:>9}{m.bytes / MB:>10.2f}{m.run.wall:>9.2f}{m.span:>9.2f}"
        f"   {kinds}{'; ' + odd if odd else ''}"
    )


def ratio(a: float, b: float) -> float | None:
    """a / b, or None when b is zero."""
    return a / b if b else None


def pct(value: float | None) -> str:
    """A ratio as a percentage, or - when there is none."""
    return "-" if value is None else f"{value:.2%}"


def catchup_stats(stats: dict[str, Any]) -> str:
    """The crawl's own catch-up counters (every civicband/catchup/* and the digest requests)."""
    got = [
        f"{key.removeprefix('civicband/catchup/')} {value}"
        for key, value in sorted(stats.items())
        if key.startswith("civicband/catchup/")
    ]
    got.append(f"digest requests {stats.get('civicband/digest/requests', 0)}")
    return ", ".join(got)


def label_of(m: Measurement) -> str:
    """A measurement's row label."""
    if m.kind == "unchanged":
        return "unchanged"
    if m.kind == ALL_ENTITIES:
        return "every entities_json"
    return f"{m.kind} {m.rate:.1%}"


def report(results: list[Measurement]) -> bool:
    """The ratios catch-up / full pass, then the targets with PASS or FAIL; True if all pass."""
    print()
    print(
        f"{'change':<22}{'requests':>16}{'ratio':>9}{'MB':>18}{'ratio':>9}"
        f"{'wall s':>15}{'span s':>15}  mirror = source"
    )
    print(
        f"{'':<22}{'catch-up / full':>16}{'':>9}{'catch-up / full':>18}{'':>9}"
        f"{'catch-up / full':>30}"
    )
    for m in results:
        cu, full = m.catch_up, m.full
        print(
            f"{label_of(m):<22}{cu.requests:>8} /{full.requests:>6}"
            f"{pct(ratio(cu.requests, full.requests)):>10}"
            f"{cu.bytes / MB:>9.2f} /{full.bytes / MB:>7.1f}{pct(ratio(cu.bytes, full.bytes)):>10}"
            f"{cu.run.wall:>8.2f} /{full.run.wall:>6.2f}{cu.span:>8.2f} /{full.span:>6.2f}"
            f"  {'yes' if cu.equal else 'NO'} / {'yes' if full.equal else 'NO'}"
        )
    print('\ntargets (issue "Catch-up at the cost of change"; a run whose mirror differs fails):')
    verdicts = []

    def verdict(name: str, ok: bool | None, figure: str) -> None:
        word = "not measured" if ok is None else ("PASS" if ok else "FAIL")
        verdicts.append(ok)
        print(f"  {name:<58}{figure:<44}{word}")

    unchanged = next((m for m in results if m.kind == "unchanged"), None)
    if unchanged is None:
        verdict("unchanged sites: 1 request per site (both tables)", None, "(rate 0 not asked)")
    else:
        per_site = [unchanged.catch_up.per_site[s] for s, *_ in SITES]
        ok = all(n == 1 for n in per_site) and unchanged.catch_up.requests == len(SITES)
        verdict(
            "unchanged sites: 1 request per site (both tables)",
            ok and unchanged.catch_up.equal,
            f"{unchanged.catch_up.requests} for {len(SITES)} sites"
            f" ({', '.join(map(str, per_site))})",
        )
    for kind in KINDS:
        m = next((m for m in results if m.kind == kind and m.rate == 0.01), None)
        name = (
            f"1 % {kind}: requests <= {TARGET_REQUESTS_AT_1:.0%}, bytes <= {TARGET_BYTES_AT_1:.1%}"
        )
        if m is None:
            verdict(name, None, "(rate 0.01 not asked)")
            continue
        r = ratio(m.catch_up.requests, m.full.requests)
        b = ratio(m.catch_up.bytes, m.full.bytes)
        ok = (
            r is not None and b is not None and r <= TARGET_REQUESTS_AT_1 and b <= TARGET_BYTES_AT_1
        )
        verdict(name, ok and m.catch_up.equal, f"requests {pct(r)}, bytes {pct(b)}")
    m = next((m for m in results if m.kind == ALL_ENTITIES), None)
    name = f"every entities_json re-extracted: bytes <= {TARGET_BYTES_ALL_ENTITIES:.0%}"
    if m is None:
        verdict(name, None, "(not asked)")
    else:
        b = ratio(m.catch_up.bytes, m.full.bytes)
        ok = b is not None and b <= TARGET_BYTES_ALL_ENTITIES
        verdict(name, ok and m.catch_up.equal, f"bytes {pct(b)}")
    return all(v is not False for v in verdicts)


# ---- the runs ----------------------------------------------------------------------------------


def plan(rates: list[float], kinds: list[str], all_entities: bool) -> list[tuple[str, float]]:
    """The measurements: unchanged (rate 0), each kind at each other rate, every entity."""
    out = [("unchanged", 0.0)] if 0 in rates else []
    out += [(kind, rate) for kind in kinds for rate in rates if rate > 0]
    if all_entities:
        out.append((ALL_ENTITIES, 1.0))
    return out


def run_measurements(
    server: Any,
    root: Path,
    pristine: Path,
    admin: str,
    base: str,
    site_url: str,
    subdomains: str,
    logs: Path,
    todo: list[tuple[str, float]],
    text_size: int,
) -> list[Measurement]:
    """Each measurement: the pristine source with one change; catch-up and full pass on copies
    of the backfilled mirror, in alternating order."""
    results = []
    for i, (kind, rate) in enumerate(todo):
        restore(root, pristine)
        changes = Counter() if kind == "unchanged" else apply_change(root, kind, rate, text_size)
        print(f"\n{describe(kind, rate, changes)}", flush=True)
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
        results.append(Measurement(kind, rate, changes, measured["catch-up"], measured["full"]))
    return results


def main() -> None:
    """Generate and backfill once; then each measurement from the same source and mirror."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rates", default="0,0.001,0.01,0.1", help="comma-separated rates")
    parser.add_argument(
        "--kinds", default=",".join(KINDS), help=f"comma-separated, of {', '.join(KINDS)}"
    )
    parser.add_argument(
        "--no-all-entities",
        action="store_true",
        help="skip the measurement with every entities_json re-extracted",
    )
    parser.add_argument("--text-size", type=int, default=2000)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every site's rows")
    parser.add_argument(
        "--time-limit-ms", type=int, default=3000, help="sites' sql_time_limit_ms (civic.band: 3 s)"
    )
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if unknown := set(kinds) - KINDS.keys():
        parser.error(f"unknown kinds: {', '.join(sorted(unknown))}")
    todo = plan(rates, kinds, not args.no_all_entities)
    global SITES
    SITES = tuple((s, round(a * args.scale), round(m * args.scale)) for s, a, m in SITES)
    harness.use_bytecode_cache()
    subdomains = ",".join(s for s, *_ in SITES)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="civicband-catchup-") as tmp:
        root, pristine, logs = Path(tmp) / "sites", Path(tmp) / "pristine", Path(tmp) / "logs"
        logs.mkdir()
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
        keep_pristine(root, pristine)
        sites = ", ".join(f"{s} {a}+{m}" for s, a, m in SITES)
        print(
            f"sites (agendas+minutes): {sites}; {total} rows, text {args.text_size} chars;"
            f" generated in {time.monotonic() - started:.0f} s; Datasette {harness.DATASETTE},"
            f" sql_time_limit_ms {args.time_limit_ms}; {len(todo)} measurements;"
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
                if not backfill.equal:
                    raise SystemExit("the backfill did not make the mirror equal to the source")
                results = run_measurements(
                    server,
                    root,
                    pristine,
                    admin,
                    base,
                    site_url,
                    subdomains,
                    logs,
                    todo,
                    args.text_size,
                )
        passed = report(results)
    print(
        f"\nfingerprint blind spot: {blind_spot():.2%} of random entities_json re-extractions"
        " (new value != old, data.py's shape) keep the row's content fingerprint"
    )
    print(
        f"total {time.monotonic() - started:.0f} s;"
        f" targets {'all met' if passed else 'NOT all met'}"
    )


if __name__ == "__main__":
    main()
