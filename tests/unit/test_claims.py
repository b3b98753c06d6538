"""Claims and steps on a crawler with the project's settings: the limit, and steps that give up.

No database: the run's queue is a stand-in that answers as many claims as it is asked for, after
a pause in which another claim could start.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from scrapy.utils.test import get_crawler

from civicband import jobs
from civicband import settings as project
from civicband.args import parse_arguments
from civicband.lifecycle import ActiveJob
from civicband.registry import Registry
from civicband.source import Stopping
from civicband.spiders.civicband import CivicbandSpider

_ids = itertools.count(1)


class Queue:
    """A run's queue that has work for every claim, and yields before answering one."""

    run_id = 1
    more = True
    arguments = parse_arguments({"subdomain": "oakland.ca"})

    async def claim(self, limit: int, held: dict[int, Any]) -> list[jobs.Claim]:
        await asyncio.sleep(0)  # the database round trip: another claim may start meanwhile
        return [
            jobs.Claim(
                jobs.Lease(job_id := next(_ids), job_id, "oakland.ca", "agenda"),
                jobs.FULL,
                None,
                exhausted=False,
                pages_fetched=0,
                took_over=False,
            )
            for _ in range(limit)
        ]


def registry_for(**settings: Any) -> Registry:
    values = {name: getattr(project, name) for name in dir(project) if name.isupper()}
    values["EXTENSIONS"] = {"civicband.store.Store": 0, "civicband.source.Source": 1}
    crawler = get_crawler(CivicbandSpider, {**values, **settings})
    crawler.crawling = True
    registry = crawler.get_extension(Registry)
    assert registry is not None
    return registry


def test_claims_at_once_never_hold_more_than_max_active_jobs(monkeypatch):
    registry = registry_for(CIVICBAND_MAX_ACTIVE_JOBS=3)
    registry.claims.queue = Queue()
    monkeypatch.setattr(registry, "start", lambda job: None)  # no step here: only the count

    async def scenario() -> None:
        # The start's claim, a probe's and a refill's, all at once.
        await asyncio.gather(*(registry.claims.claim() for _ in range(3)))

    asyncio.run(scenario())
    assert len(registry.jobs) == 3


def test_a_step_refused_while_the_crawl_runs_fails_its_job(monkeypatch):
    registry = registry_for()
    failed: list[tuple[ActiveJob, str]] = []

    async def fail(job: ActiveJob, error: str, **_: Any) -> None:
        failed.append((job, error))

    monkeypatch.setattr(registry, "fail", fail)
    claim = jobs.Claim(
        jobs.Lease(7, 3, "oakland.ca", "agenda"), jobs.CATCHUP, None, False, 0, False
    )
    job = registry.add(claim, 1, allow_shrink=False, repair=False)

    async def refused() -> None:
        raise Stopping("https://oakland.ca.civic.band/meetings/-/query.json")

    async def scenario() -> None:
        registry.spawn(job, refused(), "the catch-up")
        while job.tasks or not failed:
            await asyncio.sleep(0)

    asyncio.run(asyncio.wait_for(scenario(), timeout=5))
    ((failed_job, error),) = failed
    assert failed_job is job and "unexpected error in the catch-up: Stopping" in error
