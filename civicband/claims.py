"""Keeping this process busy: opening the run, claiming jobs, and what the idle spider asks.

The Registry owns each job's life; Claims supplies the jobs. It claims at most
CIVICBAND_MAX_ACTIVE_JOBS from the run's queue (civicband.runs) and more as jobs end or the
spider goes idle, asks again for a page whose request was lost, and, when the crawl ends,
pauses what is still held.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from scrapy import Request
from scrapy.statscollectors import StatsCollector

from civicband import db, jobs, mirror
from civicband import signals as civicband_signals
from civicband.args import SpiderArguments
from civicband.lifecycle import ActiveJob
from civicband.runs import RunQueue

if TYPE_CHECKING:
    from civicband.registry import Registry
    from civicband.store import Store

logger = logging.getLogger(__name__)


class Claims:
    """The run's queue as this process draws from it."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.crawler = registry.crawler
        self.stats = registry.stats
        self.max_active = self.crawler.settings.getint("CIVICBAND_MAX_ACTIVE_JOBS")
        self.queue: RunQueue | None = None
        self.closing = False  # the spider closes: no more claims
        self._claiming = asyncio.Lock()  # one claim at a time, so the limit holds
        self._refilling = False
        self._again = False  # a job ended while a refill ran: refill once more after it

    async def open(self, arguments: SpiderArguments, *, resume: bool) -> list[str]:
        """Open or join the run with these arguments; returns the named sites never seen."""
        registry = self.registry
        self.queue = RunQueue(registry.store, registry.source, self.stats, arguments)
        return await self.queue.open(resume=resume)

    async def add_site(self, subdomain: str) -> list[Request]:
        """A named site answered with JSON: queue its work and claim what this process may."""
        assert self.queue is not None
        try:
            await self.queue.add_site(subdomain)
        except db.DatabaseError as error:
            self.stats.inc_value("civicband/db/errors")
            message = f"could not add it to municipalities: {error}"
            self.registry.site_failures[subdomain] = message
            logger.error("%s: %s", subdomain, message)
            return []
        return await self.claim()

    async def claim(self) -> list[Request]:
        """Claim what this process may still run, start each job, return their first requests."""
        async with self._claiming:  # the probes, the start and refills may all ask at once
            return await self._claim()

    async def _claim(self) -> list[Request]:
        registry = self.registry
        limit = self.max_active - len(registry.jobs)
        if limit <= 0 or self.queue is None or not self.crawler.crawling or self.closing:
            return []
        if registry.database_down:
            return []
        try:
            claims = await self.queue.claim(limit, registry.jobs)
        except db.DatabaseUnavailable as error:
            await registry.database_lost(error)
            return []
        except db.DatabaseError as error:
            self.stats.inc_value("civicband/db/errors")
            logger.error("Could not claim jobs: %s", error)
            return []
        arguments = self.queue.arguments
        requests = []
        for claim in claims:
            job = registry.add(
                claim,
                self.queue.run_id,
                allow_shrink=arguments.allow_shrink,
                repair=arguments.repair,
                exact=arguments.exact,
            )
            self._count_start(job, claim)
            if (request := registry.start(job)) is not None:
                requests.append(request)
        return requests

    def _count_start(self, job: ActiveJob, claim: jobs.Claim) -> None:
        self.stats.inc_value("civicband/jobs/started")
        if claim.took_over:
            self.stats.inc_value("civicband/jobs/taken_over")
        if claim.cursor is not None or claim.exhausted or claim.pages_fetched:
            self.stats.inc_value("civicband/jobs/resumed")
            how = "taken over" if claim.took_over else "resumed"
            logger.info("%s (%s) %s from cursor %r", job, claim.mode, how, claim.cursor)
        else:
            logger.info("%s started (%s)", job, claim.mode)

    # ---- the idle spider, and jobs ending ---------------------------------------------------

    def keep_open(self) -> bool:
        """The spider went idle: whether to stay open (jobs run, or the queue may hold more)."""
        registry = self.registry
        if self._refilling:
            return True
        if registry.jobs:
            for job in list(registry.jobs.values()):
                self._reissue_if_stalled(job)
            return True
        more = self.queue is not None and self.queue.more
        if more and self.crawler.crawling and not registry.database_down:
            self.refill()
            return True
        return False

    def _reissue_if_stalled(self, job: ActiveJob) -> None:
        """Idle means nothing is queued, downloading or being stored: a paging job is stuck."""
        if not job.stalled():
            return
        registry = self.registry
        if not job.reissue():
            error = "stalled: the request for its next page was lost"
            registry.spawn(job, registry.fail(job, error), "recording a failure")
            return
        self.stats.inc_value("civicband/requests/reissued")
        logger.warning("%s: no request for its next page was in flight; asking again", job)
        self.crawl(self.crawler.spider.page_request(job))

    def job_ended(self) -> None:
        """A job left this process: the queue may hold work for its place."""
        if self.queue is not None:
            self.queue.more = True
        self._again = self._refilling
        self.refill()

    def refill(self) -> None:
        """Claim more work in the background, and crawl its first requests."""
        if self._refilling or not self.crawler.crawling or self.closing:
            return
        self._refilling = True

        async def refill() -> None:
            try:
                for request in await self.claim():
                    self.crawl(request)
            finally:
                self._refilling = False
                if self._again:  # a place freed while this one claimed: claim for it too
                    self._again = False
                    self.refill()
                self._wake()

        self.registry.background(refill())

    def crawl(self, request: Request) -> None:
        """Hand a request to the engine (Scrapy's public way to add one mid-crawl)."""
        if self.crawler.crawling:
            self.crawler.engine.crawl(request)

    def _wake(self) -> None:
        """Have the engine look again whether the spider is idle.

        Scrapy re-checks only when a request or item moves, or on its 5 s heartbeat; when the
        last job ends in a database step nothing moves. Scrapy has no public call for this: the
        one use of an engine internal in the project.
        """
        slot = getattr(self.crawler.engine, "_slot", None)
        if slot is not None:
            slot.nextcall.schedule()

    async def remember_dialects(self) -> None:
        """Keep which Datasette line each site speaks, for the next run (one probe less)."""
        learned = self.registry.source.learned()
        if not learned:
            return

        async def work(conn: Any) -> None:
            for subdomain, dialect in learned:
                await jobs.remember_source(conn, subdomain, dialect)

        try:
            await self.registry.store.transact(work, "remembering what sites showed")
        except db.DatabaseError as error:
            logger.warning("Could not keep what the sites showed of themselves: %s", error)

    async def _pause_and_summarise(self, held: list[ActiveJob]) -> list[dict[str, Any]]:
        """At the end of the crawl: pause the jobs still held (fenced); every job's summary."""
        registry, store = self.registry, self.registry.store
        try:
            paused = await store.transact(
                lambda conn: jobs.pause(conn, [job.lease for job in held]), "pausing jobs"
            )
        except db.DatabaseError as error:
            logger.error("Could not mark jobs %s paused: %s", [j.job_id for j in held], error)
            return []
        for job_id in paused:
            registry.outcomes[job_id] = "paused"
        if paused:
            self.stats.inc_value("civicband/jobs/paused", len(paused))
            logger.info("Paused jobs %s; resume with -a resume=true or the same JOBDIR", paused)
        for job in held:
            await store.release(job.job_id)
        registry.jobs.clear()
        try:
            return await store.transact(
                lambda conn: jobs.summaries(conn, sorted(registry.touched)), "summarising jobs"
            )
        except db.DatabaseError as error:
            logger.error("Could not read the jobs for the summary: %s", error)
            return []

    # ---- a lease connection renewed, and the end of the crawl --------------------------------

    def leases_renewed(self, lost: list[int], kept: list[int]) -> None:
        """The lease connection was cut and renewed: jobs whose lease went elsewhere stop now."""
        self.registry.background(self._settle_leases(lost, kept))

    async def _settle_leases(self, lost: list[int], kept: list[int]) -> None:
        """Stop the jobs whose lock others took, then those whose token moved meanwhile."""
        registry = self.registry
        for job_id in lost:
            if (job := registry.get(job_id)) is not None:
                await registry.lost(job)
        held = [job.lease for job_id in kept if (job := registry.get(job_id)) is not None]
        if not held:
            return
        try:
            moved = await registry.store.transact(
                lambda conn: jobs.moved_leases(conn, held), "checking the renewed leases"
            )
        except db.DatabaseError as error:
            logger.warning("Could not check the renewed leases (%s): their next write will", error)
            return
        for job_id in moved:
            if (job := registry.get(job_id)) is not None:
                await registry.lost(job)

    async def spider_closed(self, reason: str) -> None:
        """Stop every step, pause the jobs still held, and report every job this process had."""
        registry = self.registry
        self.closing = True
        # The steps of running jobs stop (the jobs are paused below); a job that already ended
        # is still recording how (its failure, its verdict): that is let finish.
        running = [task for job in registry.jobs.values() if not job.stopped for task in job.tasks]
        for task in running:
            task.cancel()
        ending = [task for job in registry.jobs.values() if job.stopped for task in job.tasks]
        await asyncio.gather(*running, *ending, return_exceptions=True)
        held = [job for job in registry.jobs.values() if not job.stopped]
        summaries: list[dict[str, Any]] = []
        purged = None
        if registry.store.is_open and not registry.database_down:
            summaries = await self._pause_and_summarise(held)
            purged = await purge_tombstones(registry.store, self.stats, self.crawler.settings)
        self.crawler.signals.send_catch_log(
            civicband_signals.jobs_closed, summaries=summaries, purged=purged
        )


async def purge_tombstones(store: Store, stats: StatsCollector, settings: Any) -> int | None:
    """Once per crawl: forget removed pages kept longer than CIVICBAND_TOMBSTONE_DAYS."""
    days = settings.getfloat("CIVICBAND_TOMBSTONE_DAYS")
    try:
        purged = await store.transact(
            lambda conn: mirror.purge_tombstones(conn, days), "purging tombstones"
        )
    except db.DatabaseError as error:
        logger.error("Could not purge old tombstones: %s", error)
        return None
    stats.set_value("civicband/tombstones/purged", purged)
    return purged
