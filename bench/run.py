"""Time `scrapy crawl civicband` against per-row, fetch-then-COPY and bare fetch loops."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import harness
from harness import MB, Run

TARGET_PER_ROW = 5.0  # per-row time / crawl time, at least
TARGET_COPY = 0.9  # COPY-loop time / crawl time, at least (start-up and verification included)
TARGET_RSS_MB = 250.0  # crawl peak RSS, at most
CONTENDERS = {
    "crawl": "scrapy crawl",
    "perrow": "per-row loop",
    "copy": "fetch-then-COPY loop",
    "fetch": "bare fetch loop",
    "baseline": "scrapy crawl, baseline",
}
TABLES = {
    "crawl": "meeting_pages",
    "baseline": "meeting_pages",
    "perrow": "meeting_pages",
    "copy": "copied_pages",
}


def run_one(
    kind: str,
    site_url: str,
    subdomain: str,
    admin_url: str,
    logs: Path,
    n: int,
    baseline: Path | None = None,
) -> Run:
    """Measure one contender on a fresh database and check it stored (or saw) all n rows."""
    log = logs / f"{kind}-{time.monotonic_ns()}.log"
    with harness.fresh_database(admin_url, kind) as url:
        if kind == "crawl":
            result = harness.crawl(site_url, subdomain, url, log)
        elif kind == "baseline":
            assert baseline is not None
            result = harness.crawl(site_url, subdomain, url, log, root=baseline)
        else:
            result = harness.loop(kind, site_url, subdomain, url, log)
        if result.returncode != 0:
            raise SystemExit(f"{kind} exited {result.returncode}:\n{harness.tail(log)}")
        got = harness.count(url, TABLES[kind]) if kind in TABLES else harness.fetched_rows(log)
    if got != n:
        raise SystemExit(f"{kind}: {got} rows, expected {n}:\n{harness.tail(log)}")
    return result


def verdict(ok: bool) -> str:
    """PASS or FAIL."""
    return "PASS" if ok else "FAIL"


def report(results: dict[str, list[Run]], n: int) -> None:
    """Print the table of medians and the ratios against the targets."""
    wall = {k: statistics.median(r.wall for r in runs) for k, runs in results.items()}
    rss = {k: max(r.peak_rss for r in runs) / MB for k, runs in results.items()}
    print(f"{'contender':<22}{'wall s':>9}{'rows/s':>10}{'peak RSS MB':>13}")
    for kind, label in CONTENDERS.items():
        if kind in wall:
            print(f"{label:<22}{wall[kind]:>9.2f}{n / wall[kind]:>10.0f}{rss[kind]:>13.1f}")
    ratio = {k: wall[k] / wall["crawl"] for k in ("perrow", "copy", "fetch") if k in wall}
    print()
    if "baseline" in wall and "copy" in wall:
        print(
            f"COPY / baseline   {wall['copy'] / wall['baseline']:6.2f}  (the same ratio for the"
            f" earlier code; crawl / baseline {wall['crawl'] / wall['baseline']:.3f})"
        )
    if "perrow" in ratio:
        print(
            f"per-row / crawl   {ratio['perrow']:6.2f}  (target >= {TARGET_PER_ROW})  "
            f"{verdict(ratio['perrow'] >= TARGET_PER_ROW)}"
        )
    if "copy" in ratio:
        print(
            f"COPY / crawl      {ratio['copy']:6.2f}  (target >= {TARGET_COPY})  "
            f"{verdict(ratio['copy'] >= TARGET_COPY)}"
        )
    if "fetch" in ratio:
        print(f"fetch / crawl     {ratio['fetch']:6.2f}  (reference: the source's own pace)")
    print(
        f"crawl peak RSS    {rss['crawl']:6.1f} MB  (target <= {TARGET_RSS_MB:.0f} MB)  "
        f"{verdict(rss['crawl'] <= TARGET_RSS_MB)}"
    )


def main() -> None:
    """Generate the site, start the look-alike and PostgreSQL, measure, report."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=60_000)
    parser.add_argument("--text-size", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=1, help="interleaved runs; medians shown")
    parser.add_argument(
        "--cold-imports",
        action="store_true",
        help="no bytecode cache: every contender compiles its modules at start",
    )
    parser.add_argument(
        "--skip",
        default="",
        help="comma-separated contenders to leave out (perrow, copy, fetch), e.g. perrow: "
        "the per-row loop takes about 3 minutes a run",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="a checkout of an earlier commit (e.g. `git worktree add DIR REF`): its crawl runs"
        " as one more contender, side by side with this one",
    )
    args = parser.parse_args()
    skipped = {kind for kind in args.skip.split(",") if kind}
    if args.baseline is None:
        skipped.add("baseline")
    if not skipped <= set(CONTENDERS) - {"crawl"}:
        parser.error(f"--skip: choose among perrow, copy, fetch, got {args.skip!r}")
    if not args.cold_imports:
        harness.use_bytecode_cache(*([args.baseline] if args.baseline else []))
    subdomain = "bench.ca"
    with tempfile.TemporaryDirectory(prefix="civicband-bench-") as tmp:
        root, logs = Path(tmp) / "sites", Path(tmp) / "logs"
        logs.mkdir()
        rows = harness.data.make_rows("agendas", args.rows, text_size=args.text_size)
        size = harness.make_site(root, subdomain, rows).stat().st_size / MB
        print(
            f"site: {args.rows} rows, {harness.mean_row_bytes(rows):.0f} B/row as JSON, "
            f"SQLite {size:.0f} MB; Datasette {harness.DATASETTE}; repeat {args.repeat}; "
            f"{'cold imports' if args.cold_imports else 'bytecode cached'}; "
            f"code {harness.revision()}"
        )
        del rows
        with harness.lookalike(root) as base_url, harness.postgres(Path(tmp) / "pg") as admin:
            harness.warm(base_url, subdomain)
            site_url = base_url + "/{subdomain}"
            kinds = [kind for kind in CONTENDERS if kind not in skipped]
            results: dict[str, list[Run]] = {kind: [] for kind in kinds}
            for i in range(args.repeat):
                shift = i % len(kinds)
                for kind in kinds[shift:] + kinds[:shift]:  # rotate the order per repeat
                    run = run_one(kind, site_url, subdomain, admin, logs, args.rows, args.baseline)
                    results[kind].append(run)
                    print(
                        f"  run {i + 1} {CONTENDERS[kind]:<22}{run.wall:8.2f} s"
                        f"{run.peak_rss / MB:8.1f} MB",
                        flush=True,
                    )
            print()
            report(results, args.rows)


if __name__ == "__main__":
    main()
