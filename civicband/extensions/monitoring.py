"""Spidermon on with one setting: `-s SPIDERMON_ENABLED=True` runs civicband's monitor suite.

`Monitoring` is an add-on in the project's ADDONS, so no settings file needs editing: with
SPIDERMON_ENABLED it adds Spidermon's own extension (at 500, where Spidermon's documentation
puts it: after Scrapy's CoreStats and civicband's Outcome, so `finish_reason` is in the stats
when the close monitors read it) and civicband.monitors.CivicbandMonitorSuite to
SPIDERMON_SPIDER_CLOSE_MONITORS, next to any suites named there. Every other SPIDERMON_*
setting works as Spidermon documents it. Without SPIDERMON_ENABLED it imports nothing of
Spidermon, so the project crawls the same where the extra is not installed.
"""

from __future__ import annotations

from typing import Self

from scrapy.crawler import Crawler
from scrapy.exceptions import NotConfigured
from scrapy.settings import BaseSettings

SUITE = "civicband.monitors.CivicbandMonitorSuite"
SPIDERMON_EXTENSION_PRIORITY = 500


class Monitoring:
    """Add-on: with SPIDERMON_ENABLED, run CivicbandMonitorSuite when the spider closes."""

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        """Scrapy builds add-ons from the crawler."""
        return cls()

    def update_settings(self, settings: BaseSettings) -> None:
        """Enable Spidermon's extension and the suite before the settings freeze."""
        if not settings.getbool("SPIDERMON_ENABLED"):
            return
        try:
            from spidermon.contrib.scrapy.extensions import Spidermon
        except ImportError as missing:
            # Scrapy logs this as "Disabled <add-on>: ..." and the crawl goes on unmonitored.
            raise NotConfigured(
                f"SPIDERMON_ENABLED is set but Spidermon cannot be imported ({missing}):"
                " install civicband[monitoring]; the crawl runs without monitors"
            ) from missing
        settings.setdefault_in_component_priority_dict(
            "EXTENSIONS", Spidermon, SPIDERMON_EXTENSION_PRIORITY
        )
        settings.add_to_list("SPIDERMON_SPIDER_CLOSE_MONITORS", SUITE)
