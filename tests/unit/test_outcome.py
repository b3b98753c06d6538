"""The exit status, decided from the crawl's stats: the README's table, and stalled jobs."""

from __future__ import annotations

from typing import Any

import pytest
from scrapy.exceptions import CloseSpider
from scrapy.utils.test import get_crawler

from civicband.extensions.outcome import Outcome, exit_status
from civicband.spiders.base import StoreSpider


def stats_of(**values: Any) -> Any:
    """A crawl's stats collector holding these values (`__` stands for `/`)."""
    stats = get_crawler().stats
    for name, value in values.items():
        stats.set_value(name.replace("__", "/"), value)
    return stats


@pytest.mark.parametrize(
    ("values", "status"),
    [
        ({"finish_reason": "finished"}, 0),
        ({"finish_reason": "finished", "civicband__jobs__completed": 3}, 0),
        # A job taken over by another process is not a failure of this one.
        ({"finish_reason": "finished", "civicband__jobs__lost": 1}, 0),
        ({"finish_reason": "finished", "civicband__jobs__failed": 1}, 1),
        ({"finish_reason": "finished", "civicband__sites__failed": 1}, 1),
        ({"finish_reason": "finished", "civicband__db__errors": 1}, 1),
        ({"finish_reason": "finished", "civicband__jobs__stalled": 2}, 1),
        ({"finish_reason": "civicband_database_lost"}, 1),
        ({"finish_reason": "shutdown", "civicband__jobs__paused": 2}, 3),
        # A failure wins over an interruption.
        ({"finish_reason": "shutdown", "civicband__jobs__failed": 1}, 1),
    ],
)
def test_the_exit_status_follows_the_readme(values, status):
    assert exit_status(stats_of(**values)) == status


def test_bad_input_stopped_by_a_spider_exits_2_even_beside_other_failures():
    crawler = get_crawler(StoreSpider)
    spider = StoreSpider.from_crawler(crawler, name="probe")
    outcome = Outcome(crawler.stats)
    crawler.stats.inc_value("civicband/db/errors")  # alone, this would be exit status 1
    assert isinstance(spider._stop("subdomain: required", "civicband_bad_argument"), CloseSpider)
    outcome.spider_closed("civicband_bad_argument")
    assert crawler.stats.get_value("civicband/exit_code") == 2


def outcome_after(reason: str, paused: int) -> Any:
    """Outcome's two steps as the crawl runs them: the spider closes, then its jobs do."""
    stats = stats_of()
    outcome = Outcome(stats)
    outcome.spider_closed(reason)
    if paused:
        stats.set_value("civicband/jobs/paused", paused)
    outcome.jobs_closed([])
    return stats


def test_jobs_left_paused_by_a_crawl_that_finished_are_stalled_and_exit_1():
    stats = outcome_after("finished", paused=2)
    assert stats.get_value("civicband/jobs/stalled") == 2
    assert stats.get_value("civicband/exit_code") == 1


def test_jobs_paused_by_an_interruption_are_not_stalled():
    stats = outcome_after("shutdown", paused=2)
    assert stats.get_value("civicband/jobs/stalled") is None
    assert stats.get_value("civicband/exit_code") == 3


def test_a_crawl_that_finished_with_nothing_paused_exits_0():
    stats = outcome_after("finished", paused=0)
    assert stats.get_value("civicband/jobs/stalled") is None
    assert stats.get_value("civicband/exit_code") == 0  # recorded, not merely absent
