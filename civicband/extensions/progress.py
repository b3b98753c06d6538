"""Progress while the crawl runs, and one summary line per job when it ends, however it ends.

Every CIVICBAND_PROGRESS_INTERVAL seconds (0: never) each running job logs its site/type, rows
done / expected (the source's count taken when the job starts), rate and ETA; a job waiting
out a rate limit or a backoff says so instead of an ETA that means nothing. The summary is
logged when the engine stops, after Scrapy's stats dump, so the last lines say what happened.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Self

from scrapy import signals
from scrapy.crawler import Crawler

from civicband import signals as civicband_signals
from civicband.registry import ActiveJob, Registry

logger = logging.getLogger(__name__)


def eta(seconds: float | None) -> str:
    """A duration as h:mm:ss, or '?' when there is nothing to go by."""
    if seconds is None:
        return "?"
    whole = int(seconds)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def job_progress(job: ActiveJob, now: float) -> dict[str, Any]:
    """One job's progress as data (the log line and JSON-RPC's get_progress both read this)."""
    elapsed = max(now - job.claimed_at, 1e-9)
    done_here = job.rows_done - job.rows_at_claim
    rate = done_here / elapsed if done_here > 0 else 0.0
    left = None if job.rows_expected is None else max(job.rows_expected - job.rows_done, 0)
    seconds = None
    if job.waiting is None and job.requests_left is not None and job.requests_made > 0:
        # A catch-up: the requests the cost model still expects, at its pace so far.
        seconds = job.requests_left * elapsed / job.requests_made
    elif job.waiting is None and left is not None and rate > 0:
        seconds = left / rate
    return {
        "job_id": job.job_id,
        "subdomain": job.subdomain,
        "document_type": job.document_type,
        "status": "running",
        "state": job.waiting or job.state,
        "rows_done": job.rows_done,
        "rows_expected": job.rows_expected,
        "rate": round(rate, 1),
        "eta_seconds": None if seconds is None else round(seconds),
        "requests_left": None if job.requests_left is None else round(job.requests_left),
    }


def progress_line(progress: dict[str, Any]) -> str:
    """A job's progress in one line."""
    expected = progress["rows_expected"]
    done = progress["rows_done"]
    share = f" ({100 * done / expected:.0f} %)" if expected else ""
    head = f"{progress['subdomain']}/{progress['document_type']} job {progress['job_id']}"
    counted = f"{done}/{expected if expected is not None else '?'} rows{share}"
    state = progress["state"]
    if state in ("rate limited", "backing off"):
        return f"{head}: {counted}, {state}: no ETA while waiting"
    rate, left = progress["rate"], eta(progress["eta_seconds"])
    return f"{head}: {counted}, {rate} rows/s, ETA {left} ({state})"


def summary_line(row: dict[str, Any]) -> str:
    """One job's end in one line: status, counters, verification, and why it failed."""
    line = (
        f"{row['subdomain']}/{row['document_type']} job {row['id']} ({row['mode']}):"
        f" {row['status']}; created {row['pages_created']}, updated {row['pages_updated']}"
        f" (changed {row['pages_changed']}), restored {row['pages_restored']},"
        f" rejected {row['errors_encountered']}, removed {row['pages_removed']};"
        f" verification {row['verify_status'] or 'not done'}"
    )
    error = (row.get("last_error") or "").strip()
    if row["status"] == "failed" and error:
        line += f"; error: {error.splitlines()[0]}"
    return line


class Progress:
    """Log each running job's progress, and each job's end."""

    def __init__(self, crawler: Crawler, interval: float) -> None:
        self.crawler = crawler
        self.interval = interval
        self.registry: Registry | None = None
        self.task: asyncio.Task | None = None
        self.summary: list[str] = []

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        """Report the jobs of the registry, found once when the spider opens."""
        extension = cls(crawler, crawler.settings.getfloat("CIVICBAND_PROGRESS_INTERVAL"))
        crawler.signals.connect(extension.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(extension.jobs_closed, signal=civicband_signals.jobs_closed)
        crawler.signals.connect(extension.engine_stopped, signal=signals.engine_stopped)
        return extension

    def snapshot(self) -> list[dict[str, Any]]:
        """Every running job's progress, as data."""
        registry = self.registry
        if registry is None:
            return []
        now = time.monotonic()
        return [
            job_progress(job, now) for job in sorted(registry.jobs.values(), key=lambda j: j.job_id)
        ]

    def spider_opened(self) -> None:
        """Find the registry (extensions exist only after from_crawler); start the lines."""
        registry = self.crawler.get_extension(Registry)
        if registry is None:
            raise RuntimeError("Progress needs civicband.registry.Registry in EXTENSIONS")
        self.registry = registry
        if self.interval > 0:
            self.task = asyncio.ensure_future(self._tick())

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            for progress in self.snapshot():
                logger.info("Progress: %s", progress_line(progress))

    def jobs_closed(self, summaries: list[dict[str, Any]], purged: int | None = None) -> None:
        """Keep the summary for the very end, after Scrapy's stats dump."""
        if self.task is not None:
            self.task.cancel()
        registry = self.registry
        lines = [summary_line(row) for row in summaries]
        if registry is None:
            self.summary = lines
            return
        shown = {row["id"] for row in summaries}
        for job_id, (site, kind) in sorted(registry.touched.items()):
            if job_id not in shown:
                outcome = registry.outcomes.get(job_id, "left running (resumable)")
                lines.append(f"{site}/{kind} job {job_id}: {outcome}; database unreadable")
        lines += [
            f"{site}: not crawled: {error}"
            for site, error in sorted(registry.site_failures.items())
        ]
        if purged:  # said when some went (the stat civicband/tombstones/purged says 0 too)
            days = self.crawler.settings.getfloat("CIVICBAND_TOMBSTONE_DAYS")
            lines.append(f"tombstones: purged {purged} removed more than {days:g} days ago")
        self.summary = lines

    def engine_stopped(self) -> None:
        """The last lines of the log: what happened to each job."""
        if not self.summary:
            return
        logger.info("Summary (%d):", len(self.summary))
        for line in self.summary:
            logger.info("  %s", line)
