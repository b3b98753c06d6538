"""The crawl's final stats as JSON in a file, for scripts and tests that should not parse logs."""

from __future__ import annotations

import datetime
import json
import logging
from pathlib import Path
from typing import Any, Self

from scrapy import signals
from scrapy.crawler import Crawler
from scrapy.exceptions import NotConfigured
from scrapy.statscollectors import StatsCollector

logger = logging.getLogger(__name__)


def _plain(value: Any) -> Any:
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    return value


class StatsFile:
    """Write every stat to CIVICBAND_STATS_FILE when the engine stops, after the last is set."""

    def __init__(self, stats: StatsCollector, path: Path) -> None:
        self.stats = stats
        self.path = path

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        """Only when a file is named."""
        name = crawler.settings.get("CIVICBAND_STATS_FILE")
        if not name:
            raise NotConfigured("CIVICBAND_STATS_FILE is empty: set it to write the final stats")
        extension = cls(crawler.stats, Path(name))
        crawler.signals.connect(extension.engine_stopped, signal=signals.engine_stopped)
        return extension

    def engine_stopped(self) -> None:
        """Write the stats, replacing the file in one step so a reader never sees half of it."""
        stats = {key: _plain(value) for key, value in self.stats.get_stats().items()}
        partial = self.path.with_name(self.path.name + ".partial")
        try:
            partial.write_text(json.dumps(stats, indent=2, sort_keys=True, default=str))
            partial.replace(self.path)
        except OSError as error:
            logger.error("Could not write the stats to %s: %s", self.path, error)
