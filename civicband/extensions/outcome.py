"""The crawl's exit status, decided from what happened, for the project's `crawl` command."""

from __future__ import annotations

import logging
from typing import Any, Self

from scrapy import signals
from scrapy.crawler import Crawler
from scrapy.statscollectors import StatsCollector

from civicband import signals as civicband_signals

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 3
# Reasons a spider closes with for bad input or a database unreachable before any fetch.
BAD_INPUT_REASONS = ("civicband_bad_argument", "civicband_database_unavailable")


def exit_status(stats: StatsCollector) -> int:
    """0 all completed, 1 a job failed, 2 bad input or no database, 3 interrupted."""
    if stats.get_value("finish_reason") in BAD_INPUT_REASONS:
        return EXIT_BAD_INPUT
    failed = (
        stats.get_value("civicband/jobs/failed", 0)
        + stats.get_value("civicband/sites/failed", 0)
        + stats.get_value("civicband/db/errors", 0)
    )
    if failed or stats.get_value("civicband/jobs/stalled", 0):
        return EXIT_FAILED
    if stats.get_value("finish_reason") == "shutdown":
        return EXIT_INTERRUPTED
    if stats.get_value("finish_reason") not in (None, "finished"):
        return EXIT_FAILED
    return EXIT_OK


class Outcome:
    """Record the exit status in stats (`civicband/exit_code`) for scrapyd and monitors."""

    def __init__(self, stats: StatsCollector) -> None:
        self.stats = stats

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        """Listen for the end of the crawl, and for the jobs' end after it."""
        extension = cls(crawler.stats)
        crawler.signals.connect(extension.spider_closed, signal=signals.spider_closed)
        crawler.signals.connect(extension.jobs_closed, signal=civicband_signals.jobs_closed)
        return extension

    def spider_closed(self, reason: str) -> None:
        """Remember why the crawl ended, before its jobs are closed."""
        self.stats.set_value("finish_reason", reason)
        self.stats.set_value("civicband/exit_code", exit_status(self.stats))

    def jobs_closed(self, summaries: list[dict[str, Any]]) -> None:
        """Store the status the process will exit with, once jobs still held are paused."""
        reason = self.stats.get_value("finish_reason")
        paused = self.stats.get_value("civicband/jobs/paused", 0)
        if reason == "finished" and paused:
            # Nothing interrupted the crawl, yet jobs were left unfinished: a request was lost.
            self.stats.set_value("civicband/jobs/stalled", paused)
            logger.error(
                "%s jobs were left unfinished although the crawl ended normally;"
                " they are paused: resume with -a resume=true",
                paused,
            )
        self.stats.set_value("civicband/exit_code", exit_status(self.stats))
