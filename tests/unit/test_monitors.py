"""The monitoring add-on and CivicbandMonitorSuite, run by real Spidermon on chosen stats."""

from __future__ import annotations

from typing import Any

import pytest
from scrapy import Spider
from scrapy.crawler import Crawler
from scrapy.extensions.corestats import CoreStats
from scrapy.utils.conf import build_component_list
from scrapy.utils.misc import load_object
from scrapy.utils.test import get_crawler
from spidermon.contrib.scrapy.extensions import Spidermon
from spidermon.contrib.scrapy.runners import SpiderMonitorRunner

from civicband import settings as project
from civicband.args import ArgumentError
from civicband.config import check_number_settings
from civicband.extensions.outcome import Outcome
from civicband.monitors import CivicbandMonitorSuite

SUITE = "civicband.monitors.CivicbandMonitorSuite"
PROJECT = {name: getattr(project, name) for name in dir(project) if name.isupper()}
CLEAN = {"finish_reason": "finished", "civicband/jobs/completed": 2, "civicband/rows/fetched": 9}


def crawler_with(**settings: Any) -> Crawler:
    """A crawler of the project's settings and these, its add-ons applied."""
    return get_crawler(settings_dict={**PROJECT, **settings})


def extensions(crawler: Crawler) -> list[Any]:
    """The crawler's extensions in the order Scrapy builds them, and so connects their signals."""
    return [
        load_object(path) if isinstance(path, str) else path
        for path in build_component_list(crawler.settings.getwithbase("EXTENSIONS"))
    ]


def test_spidermon_enabled_alone_adds_spidermon_and_the_suite():
    crawler = crawler_with(SPIDERMON_ENABLED="True")  # as -s gives it: a string
    assert crawler.settings.getlist("SPIDERMON_SPIDER_CLOSE_MONITORS") == [SUITE]
    order = extensions(crawler)
    assert Spidermon in order
    # Spidermon reads finish_reason when the spider closes: CoreStats and Outcome set it in
    # their own spider_closed handlers, which must have run by then.
    assert order.index(CoreStats) < order.index(Spidermon)
    assert order.index(Outcome) < order.index(Spidermon)


def test_the_suite_joins_the_close_monitors_the_user_names():
    theirs = "spidermon.contrib.scrapy.monitors.SpiderCloseMonitorSuite"
    crawler = crawler_with(SPIDERMON_ENABLED=True, SPIDERMON_SPIDER_CLOSE_MONITORS=theirs)
    assert crawler.settings.getlist("SPIDERMON_SPIDER_CLOSE_MONITORS") == [theirs, SUITE]


def test_a_priority_the_user_gave_spidermon_is_kept():
    path = "spidermon.contrib.scrapy.extensions.Spidermon"
    crawler = crawler_with(SPIDERMON_ENABLED=True, EXTENSIONS={**project.EXTENSIONS, path: 900})
    assert crawler.settings.getdict("EXTENSIONS")[path] == 900
    assert extensions(crawler).count(Spidermon) == 1


@pytest.mark.parametrize("enabled", [None, False, "False"])
def test_without_spidermon_enabled_the_add_on_changes_nothing(enabled):
    settings = {} if enabled is None else {"SPIDERMON_ENABLED": enabled}
    crawler = crawler_with(**settings)
    assert Spidermon not in extensions(crawler)
    assert crawler.settings.getlist("SPIDERMON_SPIDER_CLOSE_MONITORS") == []


def judge(stats: dict[str, Any], **settings: Any) -> tuple[dict[str, str], dict[str, Any]]:
    """Run the suite as Spidermon's extension does; each monitor's status, and the stats after."""
    crawler = crawler_with(SPIDERMON_ENABLED=True, **settings)
    for name, value in stats.items():
        crawler.stats.set_value(name, value)
    spider = Spider(name="civicband")
    result = SpiderMonitorRunner(spider=spider).run(
        CivicbandMonitorSuite(crawler=crawler),
        stats=crawler.stats.get_stats(),
        crawler=crawler,
        spider=spider,
    )
    statuses = {item.item.name: item.status for item in result.monitor_results}
    return statuses, crawler.stats.get_stats()


def failing(stats: dict[str, Any], **settings: Any) -> list[str]:
    """The names of the monitors that did not pass."""
    statuses, _ = judge(stats, **settings)
    assert len(statuses) == 5, statuses
    return sorted(name for name, status in statuses.items() if status != "OK")


def test_a_clean_crawl_passes_and_is_counted():
    statuses, stats = judge(CLEAN)
    assert set(statuses.values()) == {"OK"}, statuses
    assert (stats["civicband/monitors/passed"], stats["civicband/monitors/failed"]) == (5, 0)


@pytest.mark.parametrize(
    ("stat", "monitor"),
    [
        ("civicband/jobs/failed", "Jobs monitor/Should have no failed jobs"),
        ("civicband/sites/failed", "Jobs monitor/Should have no failed sites"),
        ("civicband/verify/failed", "Verification monitor/Should have no failed verification"),
        (
            "civicband/rows/rejected",
            "Rejected rows monitor/Should reject at most CIVICBAND_MONITOR_MAX_REJECTED rows",
        ),
    ],
)
def test_each_failure_fails_its_own_monitor(stat, monitor):
    assert failing({**CLEAN, stat: 1}) == [monitor]
    _, stats = judge({**CLEAN, stat: 1})
    assert (stats["civicband/monitors/passed"], stats["civicband/monitors/failed"]) == (4, 1)


def test_warned_and_unknown_verifications_and_lost_jobs_pass():
    stats = {
        **CLEAN,
        "civicband/verify/warned": 1,
        "civicband/verify/unknown": 1,
        "civicband/jobs/lost": 1,
    }
    assert failing(stats) == []


@pytest.mark.parametrize(
    ("rejected", "allowed", "fails"), [(3, "3", False), (4, "3", True), (0, "0", False)]
)
def test_rejected_rows_are_judged_against_the_setting(rejected, allowed, fails):
    stats = {**CLEAN, "civicband/rows/rejected": rejected}
    found = failing(stats, CIVICBAND_MONITOR_MAX_REJECTED=allowed)
    assert bool(found) is fails, found


@pytest.mark.parametrize(
    ("reason", "expected", "fails"),
    [
        ("shutdown", None, True),
        ("closespider_pagecount", None, True),
        ("closespider_pagecount", "finished,closespider_pagecount", False),
    ],
)
def test_the_finish_reason_is_judged_by_spidermons_own_monitor(reason, expected, fails):
    settings = {} if expected is None else {"SPIDERMON_EXPECTED_FINISH_REASONS": expected}
    found = failing({**CLEAN, "finish_reason": reason}, **settings)
    assert found == (["Finish Reason Monitor/Should have the expected finished reason(s)"] * fails)


@pytest.mark.parametrize("raw", ["-1", "1.5", "many", ""])
def test_the_threshold_is_a_whole_number_from_0(raw):
    name = "CIVICBAND_MONITOR_MAX_REJECTED"
    with pytest.raises(ArgumentError, match=rf"^{name}: expected a whole number from 0 up"):
        check_number_settings({name: raw}, [name])
    check_number_settings({name: "7"}, [name])
