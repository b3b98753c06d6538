"""Two crawl processes writing one database at once: what the change feed's versions lock costs.

Every transaction that takes versions holds one advisory lock from its first version-taking
statement to its commit (civicband/mirror.py), so page transactions of different processes
take turns there. This measures the wall time of two full passes of two sites, run at once
into one fresh database, for this checkout and for an earlier one (`--baseline DIR`, e.g. a
`git worktree` of the commit before the feed), rounds interleaved.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import harness
from harness import REPO

SITES = ("one.ca", "two.ca")


def both_at_once(site_url: str, admin_url: str, logs: Path, root: Path, rows: int) -> float:
    """Wall seconds from starting two crawls (one site each) to the end of the later one."""
    label = "current" if root == REPO else "baseline"
    with harness.fresh_database(admin_url, label) as url:
        start = time.monotonic()
        with ThreadPoolExecutor(len(SITES)) as pool:
            runs = list(
                pool.map(
                    lambda site: harness.crawl(
                        site_url,
                        site,
                        url,
                        logs / f"{label}-{site}-{time.monotonic_ns()}.log",
                        root=root,
                    ),
                    SITES,
                )
            )
        wall = time.monotonic() - start
        if any(run.returncode for run in runs) or harness.count(url, "meeting_pages") != 2 * rows:
            raise SystemExit(f"{label}: a crawl failed or stored the wrong number of rows")
    return wall


def main() -> None:
    """Generate two sites, serve them, time both checkouts' concurrent full passes."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=30_000, help="agenda rows per site")
    parser.add_argument("--text-size", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--baseline", type=Path, required=True)
    args = parser.parse_args()
    harness.use_bytecode_cache(args.baseline)
    with tempfile.TemporaryDirectory(prefix="civicband-bench-") as tmp:
        root, logs = Path(tmp) / "sites", Path(tmp) / "logs"
        logs.mkdir()
        for n, site in enumerate(SITES):
            rows = harness.data.make_rows("agendas", args.rows, text_size=args.text_size, seed=n)
            harness.make_site(root, site, rows)
            del rows
        print(f"two sites of {args.rows} rows, crawled at once; code {harness.revision()}")
        with harness.lookalike(root) as base_url, harness.postgres(Path(tmp) / "pg") as admin:
            for site in SITES:
                harness.warm(base_url, site)
            site_url = base_url + "/{subdomain}"
            walls: dict[str, list[float]] = {"baseline": [], "current": []}
            for i in range(args.repeat):
                order = [("baseline", args.baseline), ("current", REPO)]
                for label, checkout in order if i % 2 == 0 else order[::-1]:
                    wall = both_at_once(site_url, admin, logs, checkout, args.rows)
                    walls[label].append(wall)
                    print(f"  run {i + 1} {label:<9}{wall:8.2f} s", flush=True)
        median = {label: statistics.median(values) for label, values in walls.items()}
        print(
            f"\nmedian wall: baseline {median['baseline']:.2f} s, current {median['current']:.2f}"
            f" s; current / baseline {median['current'] / median['baseline']:.3f}"
        )


if __name__ == "__main__":
    main()
