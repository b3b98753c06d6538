"""The spider going idle while a full pass has no request in flight: its next page is asked again.

On a crawler with the project's settings, the Registry and the Source; the engine is a stand-in
that records what the spider hands it (no download happens here).
"""

from __future__ import annotations

from typing import Any

import pytest
from scrapy import Request
from scrapy.exceptions import DontCloseSpider
from scrapy.utils.test import get_crawler

from civicband import jobs
from civicband import settings as project
from civicband.lifecycle import CATCHING_UP, ENDED, FETCHING, MAX_REISSUES, ActiveJob
from civicband.registry import Registry
from civicband.spiders.civicband import CivicbandSpider

REISSUED = "civicband/requests/reissued"
CURSOR = "00d5ee9e5f1a,00d5ee9e5f1a"


class RecordingEngine:
    """What the spider gives the engine to crawl."""

    def __init__(self) -> None:
        self.crawled: list[Request] = []

    def crawl(self, request: Request) -> None:
        self.crawled.append(request)


@pytest.fixture
def spider() -> CivicbandSpider:
    values = {name: getattr(project, name) for name in dir(project) if name.isupper()}
    values["EXTENSIONS"] = {"civicband.store.Store": 0, "civicband.source.Source": 1}
    crawler = get_crawler(CivicbandSpider, values)
    spider = CivicbandSpider.from_crawler(crawler, subdomain="oakland.ca")
    crawler.spider = spider
    crawler.engine = RecordingEngine()
    crawler.crawling = True  # the spider goes idle while the crawl runs
    return spider


def hold(
    spider: CivicbandSpider, *, cursor: str | None = CURSOR, job_id: int = 7, state: str = FETCHING
) -> ActiveJob:
    registry = spider.crawler.get_extension(Registry)
    lease = jobs.Lease(job_id, 3, "oakland.ca", "agenda")
    mode = jobs.FULL if state == FETCHING else jobs.CATCHUP
    claim = jobs.Claim(lease, mode, cursor, exhausted=False, pages_fetched=40, took_over=False)
    job = registry.add(claim, run_id=1, allow_shrink=False, repair=False)
    job.move(state)
    return job


def stat(spider: CivicbandSpider) -> Any:
    return spider.crawler.stats.get_value(REISSUED)


def test_idle_with_no_page_in_flight_asks_for_the_next_page_again(spider):
    job = hold(spider)
    with pytest.raises(DontCloseSpider):
        spider.spider_idle()
    (request,) = spider.crawler.engine.crawled
    assert (request.meta["job_id"], request.meta["cursor"], request.meta["token"]) == (7, CURSOR, 3)
    assert f"_next={CURSOR.replace(',', '%2C')}" in request.url
    assert stat(spider) == 1 and job.reissue()  # one of MAX_REISSUES used


def test_a_stalled_job_is_asked_again_at_most_max_reissues_times_by_this_path(spider):
    job = hold(spider)
    for _ in range(MAX_REISSUES):
        with pytest.raises(DontCloseSpider):
            spider.spider_idle()
    assert stat(spider) == MAX_REISSUES
    assert len(spider.crawler.engine.crawled) == MAX_REISSUES
    assert not job.reissue()  # used up: the next idle fails the job instead


@pytest.mark.parametrize("why", ["in flight", "catching up", "stopped"])
def test_a_job_with_its_page_on_the_way_or_not_paging_is_left_alone(spider, why):
    job = hold(spider, state=CATCHING_UP if why == "catching up" else FETCHING)
    if why == "in flight":
        job.refetching()
    elif why == "stopped":
        job.move(ENDED)
    with pytest.raises(DontCloseSpider):  # a held job keeps the spider open either way
        spider.spider_idle()
    assert spider.crawler.engine.crawled == []
    assert stat(spider) is None
