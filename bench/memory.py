"""Peak RSS of `scrapy crawl civicband` on sites of growing size: it must stay flat and small."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import harness
from harness import MB

TARGET_RSS_MB = 250.0  # at most, at every size
# Peak RSS at the largest size / at the one before it, at most. Not largest / smallest: the
# first pages warm the process up (a few MB) before memory levels off, so small sites
# measure that warm-up rather than growth.
TARGET_GROWTH = 1.05


def main() -> None:
    """Generate one site per size (prefixes of one row list), crawl each, print peak RSS."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="15000,30000,60000", help="comma-separated row counts")
    parser.add_argument("--text-size", type=int, default=2000)
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    with tempfile.TemporaryDirectory(prefix="civicband-memory-") as tmp:
        root, logs = Path(tmp) / "sites", Path(tmp) / "logs"
        logs.mkdir()
        rows = harness.data.make_rows("agendas", sizes[-1], text_size=args.text_size)
        for n in sizes:
            harness.make_site(root, f"size-{n}.bench", rows[:n])
        del rows
        peaks: dict[int, float] = {}
        with harness.lookalike(root) as base_url, harness.postgres(Path(tmp) / "pg") as admin:
            print(f"code {harness.revision()}, text size {args.text_size}")
            print(f"{'rows':>8}{'wall s':>9}{'peak RSS MB':>13}{'MB per 10k more rows':>22}")
            for n in sizes:
                subdomain = f"size-{n}.bench"
                harness.warm(base_url, subdomain)
                log = logs / f"crawl-{n}.log"
                with harness.fresh_database(admin, "memory") as url:
                    run = harness.crawl(base_url + "/{subdomain}", subdomain, url, log)
                    stored = harness.count(url, "meeting_pages")
                if run.returncode != 0 or stored != n:
                    raise SystemExit(
                        f"crawl of {n} rows: exit {run.returncode}, {stored} rows stored:\n"
                        f"{harness.tail(log)}"
                    )
                slope = ""
                if peaks:
                    before = max(peaks)
                    slope = f"{(run.peak_rss / MB - peaks[before]) / (n - before) * 10_000:+.1f}"
                peaks[n] = run.peak_rss / MB
                print(f"{n:>8}{run.wall:>9.2f}{peaks[n]:>13.1f}{slope:>22}", flush=True)
    highest = max(peaks.values())
    growth = peaks[sizes[-1]] / peaks[sizes[-2]] if len(sizes) > 1 else 1.0
    print()
    print(f"largest / smallest  {peaks[sizes[-1]] / peaks[sizes[0]]:5.2f}  (warm-up included)")
    print(
        f"largest / previous  {growth:5.2f}  (target <= {TARGET_GROWTH})  "
        f"{'PASS' if growth <= TARGET_GROWTH else 'FAIL'}"
    )
    print(
        f"highest peak RSS    {highest:5.1f} MB  (target <= {TARGET_RSS_MB:.0f} MB)  "
        f"{'PASS' if highest <= TARGET_RSS_MB else 'FAIL'}"
    )


if __name__ == "__main__":
    main()
