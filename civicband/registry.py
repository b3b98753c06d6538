"""This process's jobs: claiming them, running their steps, and every way one of them ends.

The Registry owns each job's lifecycle (civicband.lifecycle): it claims jobs from the run's
queue (civicband.runs), starts each the way its mode says, runs catch-up and verification as
async steps that return outcomes, and ends jobs. Its database side goes through
civicband/jobs.py, fenced by the job's lease token; every fenced step is one `run_step`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Self, TypeVar

from scrapy import Request, signals
from scrapy.crawler import Crawler

from civicband import db, jobs
from civicband import signals as civicband_signals
from civicband.args import SpiderArguments
from civicband.catchup import CatchUp
from civicband.lifecycle import (
    CATCHING_UP,
    ENDED,
    FETCHING,
    VERIFYING,
    ActiveJob,
    Exhausted,
    Failed,
    Restart,
)
from civicband.middlewares import RATE_LIMIT_WAITS
from civicband.runs import RunQueue
from civicband.source import Source, Stopping
from civicband.store import Store
from civicband.verification import Verify
from civicband.writer import PageWriter

logger = logging.getLogger(__name__)
T = TypeVar("T")


class JobEnded(Exception):
    """A fenced step found its job ended (recorded already): the step stops, saying nothing."""


class Registry:
    """The jobs this process runs, from claim to end."""

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.stats = crawler.stats
        self.jobs: dict[int, ActiveJob] = {}
        self.touched: dict[int, tuple[str, str]] = {}
        self.outcomes: dict[int, str] = {}  # how each job left this process, for the summary
        self.site_failures: dict[str, str] = {}  # named sites that never became jobs, and why
        self.database_down = False
        self.queue: RunQueue | None = None
        self.max_active = crawler.settings.getint("CIVICBAND_MAX_ACTIVE_JOBS")
        self._background: set[asyncio.Task] = set()
        self._refilling = False

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        """Wire the parts once the spider opens; pause what is held when it closes."""
        registry = cls(crawler)
        crawler.signals.connect(registry.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(registry.spider_closed, signal=signals.spider_closed)
        crawler.signals.connect(registry.request_waiting, signal=civicband_signals.request_waiting)
        crawler.signals.connect(registry.leases_renewed, signal=civicband_signals.leases_renewed)
        return registry

    def spider_opened(self) -> None:
        """Find the database and the source, once: extensions exist only after from_crawler."""
        store, source = self.crawler.get_extension(Store), self.crawler.get_extension(Source)
        if store is None or source is None:
            raise RuntimeError("the Registry needs civicband.store.Store and .source.Source")
        self.store, self.source = store, source
        self.writer = PageWriter(self, self.stats)
        self.catch_up = CatchUp(self.crawler, self, source)
        self.verify = Verify(self.crawler, self, source)

    # ---- the run and its queue ----------------------------------------------------------------

    async def open(self, arguments: SpiderArguments, *, resume: bool) -> list[str]:
        """Open or join the run with these arguments; returns the named sites never seen."""
        self.queue = RunQueue(self.store, self.source, self.stats, arguments)
        return await self.queue.open(resume=resume)

    async def add_site(self, subdomain: str) -> list[Request]:
        """A named site answered with JSON: queue its work and claim what this process may."""
        assert self.queue is not None
        try:
            await self.queue.add_site(subdomain)
        except db.DatabaseError as error:
            self.stats.inc_value("civicband/db/errors")
            self.site_failures[subdomain] = f"could not add it to municipalities: {error}"
            logger.error("%s: %s", subdomain, self.site_failures[subdomain])
            return []
        return await self.claim()

    async def claim(self) -> list[Request]:
        """Claim what this process may still run, start each job, return their first requests."""
        limit = self.max_active - len(self.jobs)
        if limit <= 0 or self.queue is None or not self.crawler.crawling or self.database_down:
            return []
        try:
            claims = await self.queue.claim(limit, self.jobs)
        except db.DatabaseUnavailable as error:
            await self.database_lost(error)
            return []
        except db.DatabaseError as error:
            self.stats.inc_value("civicband/db/errors")
            logger.error("Could not claim jobs: %s", error)
            return []
        arguments = self.queue.arguments
        requests = []
        for claim in claims:
            job = self.add(
                claim,
                self.queue.run_id,
                allow_shrink=arguments.allow_shrink,
                repair=arguments.repair,
                exact=arguments.exact,
            )
            self._count_start(job, claim)
            if (request := self._start(job)) is not None:
                requests.append(request)
        return requests

    def add(
        self,
        claim: jobs.Claim,
        run_id: int,
        *,
        allow_shrink: bool,
        repair: bool,
        exact: bool = False,
    ) -> ActiveJob:
        """A job this process has just claimed: it is the registry's from now on."""
        options = {"allow_shrink": allow_shrink, "repair": repair, "exact": exact}
        job = ActiveJob(claim, run_id, options)
        self.jobs[job.job_id] = job
        self.touched[job.job_id] = (job.subdomain, job.document_type)
        return job

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

    def _start(self, job: ActiveJob) -> Request | None:
        """Start a claimed job the way its mode says; a full pass's first request, if any."""
        step = job.first_step()
        job.move(step)
        if step == VERIFYING:
            self.spawn(job, self._verifying(job, Exhausted()), "verification")
        elif step == CATCHING_UP:
            self.spawn(job, self._catching_up(job), "the catch-up")
        else:
            return self._paging(job)
        return None

    def _paging(self, job: ActiveJob) -> Request:
        self.spawn(job, self._take_count(job), "counting the source's rows")
        return self._page_request(job)

    def _page_request(self, job: ActiveJob) -> Request:
        """The job's next page, as the spider that pages (the civicband spider) asks for it."""
        return self.crawler.spider.page_request(job)

    async def _take_count(self, job: ActiveJob) -> None:
        try:
            job.expect(await self.source.count(job.subdomain, job.document_type))
        except (db.DatabaseError, Stopping, ValueError) as error:
            logger.debug("%s: no source count for progress: %s", job, error)

    def keep_open(self) -> bool:
        """The spider went idle: whether to stay open (jobs run, or the queue may hold more)."""
        if self._refilling:
            return True
        if self.jobs:
            for job in list(self.jobs.values()):
                self._reissue_if_stalled(job)
            return True
        more = self.queue is not None and self.queue.more
        if more and self.crawler.crawling and not self.database_down:
            self._refill()
            return True
        return False

    def _reissue_if_stalled(self, job: ActiveJob) -> None:
        """Idle means nothing is queued, downloading or being stored: a paging job is stuck."""
        if not job.stalled():
            return
        if not job.reissue():
            self.spawn(job, self.fail(job, "stalled: the request for its next page was lost"), "")
            return
        self.stats.inc_value("civicband/requests/reissued")
        logger.warning("%s: no request for its next page was in flight; asking again", job)
        self._crawl(self._page_request(job))

    def _refill(self) -> None:
        if self._refilling or not self.crawler.crawling:
            return
        self._refilling = True

        async def refill() -> None:
            try:
                for request in await self.claim():
                    self._crawl(request)
            finally:
                self._refilling = False
                self._wake()

        self._background_task(refill())

    def _crawl(self, request: Request | None) -> None:
        if request is not None and self.crawler.engine is not None:
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

    # ---- paging: the spider, the gate and the pipeline ask here -------------------------------

    def get(self, job_id: Any, token: Any = None) -> ActiveJob | None:
        """The job if this process still holds it (under `token`, when given)."""
        job = self.jobs.get(job_id)
        if job is None or job.stopped or (token is not None and token != job.lease.token):
            return None
        return job

    def admit(self, request: Request) -> str | None:
        """Why a page request must not be fetched, or None (the gate's rule).

        PostgreSQL's cursor is the truth and this process's job holds it: a request for a job
        held elsewhere, for a page already stored, or for a page already on its way is dropped.
        """
        job = self.get(request.meta.get("job_id"))
        if job is None:
            return "not running here"
        meta = request.meta
        retry = meta.get("retry_times", 0) > 0 or meta.get(RATE_LIMIT_WAITS, 0) > 0
        why = job.admit(meta.get("cursor"), retry=retry)
        if why is None:
            meta["token"] = job.lease.token  # a request restored from JOBDIR names the old one
        return why

    def request_waiting(self, request: Request, why: str | None) -> None:
        """A request of a job waits out a backoff or a rate limit, or stopped waiting."""
        if (job := self.get(request.meta.get("job_id"))) is not None:
            job.wait(why)

    def page_stored(self, job: ActiveJob, *, final: bool) -> None:
        """The pipeline committed a page; after the last one, verification takes over."""
        if final and job.move(VERIFYING):
            logger.info("%s: all pages stored; verifying", job)
            self.spawn(job, self._verifying(job, Exhausted()), "verification")

    # ---- steps ----------------------------------------------------------------------------------

    def spawn(self, job: ActiveJob, work: Coroutine[Any, Any, None], what: str) -> None:
        """Run one step of a job; anything it did not expect fails the job, visibly."""
        task = asyncio.ensure_future(work)
        job.tasks.add(task)

        def done(finished: asyncio.Task) -> None:
            job.tasks.discard(finished)
            if finished.cancelled() or (error := finished.exception()) is None:
                return
            if isinstance(error, JobEnded | Stopping):
                return  # the job ended and said why, or the crawl stops: it is paused
            logger.error("%s: unexpected error in %s", job, what, exc_info=error)
            message = f"unexpected error in {what}: {type(error).__name__}: {db.one_line(error)}"
            self._background_task(self.fail(job, message))

        task.add_done_callback(done)

    async def run_step(self, job: ActiveJob, what: str, work: Callable[[Any], Awaitable[T]]) -> T:
        """One fenced database step of a job, in one transaction; what goes wrong ends the job.

        A lost lease stops the job here; a database that stays down stops the crawl (jobs stay
        resumable); any other error fails the job with the reason. Then JobEnded.
        """
        try:
            return await self.store.transact(work, f"{what} ({job.lease})")
        except jobs.LeaseLost:
            await self.lost(job)
        except db.DatabaseUnavailable as error:
            await self.database_lost(error)
        except db.DatabaseError as error:
            self.stats.inc_value("civicband/db/errors")
            await self.fail(job, f"database error {what}: {error}")
        except Exception as error:
            logger.exception("%s: unexpected error %s", job, what)
            await self.fail(
                job, f"unexpected error {what}: {type(error).__name__}: {db.one_line(error)}"
            )
        raise JobEnded(str(job))

    async def _catching_up(self, job: ActiveJob) -> None:
        outcome = await self.catch_up.run(job)
        if isinstance(outcome, Restart):
            await self.run_step(job, "restarting as a full pass", self._restart(job))
            self.stats.inc_value("civicband/catchup/full_passes")
            logger.info(
                "%s: %d pages differ, more than a full pass costs: paging through instead",
                job,
                outcome.fetch,
            )
            if job.restart_full():
                self._crawl(self._paging(job))
        elif isinstance(outcome, Exhausted) and job.move(VERIFYING):
            await self._verifying(job, outcome)
        elif isinstance(outcome, Failed):
            await self.fail(job, outcome.message)

    @staticmethod
    def _restart(job: ActiveJob) -> Callable[[Any], Awaitable[None]]:
        return lambda conn: jobs.restart_full(conn, job.lease)

    async def _verifying(self, job: ActiveJob, taken: Exhausted) -> None:
        status = await self.verify.run(job, taken)
        await self.end(job, status)

    # ---- how a job ends -----------------------------------------------------------------------

    async def fail(self, job: ActiveJob, error: str, *, retries_exhausted: bool = False) -> None:
        """The job cannot go on here: failed with why (fenced), its cursor kept for resume."""
        if not job.move(ENDED):
            return
        try:
            await self.store.transact(
                lambda conn: jobs.fail(conn, job.lease, error, retries_exhausted=retries_exhausted),
                f"recording the failure of {job.lease}",
            )
        except jobs.LeaseLost:
            await self._leave(job, "lost")
            return
        except db.DatabaseError as problem:
            self.stats.inc_value("civicband/db/errors")
            logger.error("%s: could not record its failure (%s): %s", job, problem, error)
        self.stats.inc_value("civicband/jobs/failed")
        logger.error("%s failed: %s", job, error)
        await self._leave(job, "failed")

    async def lost(self, job: ActiveJob) -> None:
        """Another process claimed the job since this one did: stop it here, writing nothing."""
        if job.move(ENDED):
            await self._leave(job, "lost")

    async def end(self, job: ActiveJob, status: str) -> None:
        """The job's verdict is recorded: it leaves this process."""
        if job.move(ENDED):
            await self._leave(job, status)

    async def _leave(self, job: ActiveJob, status: str) -> None:
        """Give the lease back, stop its other steps, and claim more work."""
        if status == "lost":
            self.stats.inc_value("civicband/jobs/lost")
            logger.warning("%s: its lease was taken by another process; stopped here", job)
        if self.jobs.pop(job.job_id, None) is None:
            return
        self.outcomes[job.job_id] = status
        current = asyncio.current_task()
        for task in list(job.tasks):
            if task is not current:
                task.cancel()
        if not self.database_down:
            await self.store.release(job.job_id)
            self._background_task(self._remember_dialects())
        if self.queue is not None:
            self.queue.more = True
        self._refill()

    async def _remember_dialects(self) -> None:
        """Keep which Datasette line each site speaks, for the next run (one probe less)."""
        learned = self.source.learned()
        if not learned:
            return

        async def work(conn: Any) -> None:
            for subdomain, dialect in learned:
                await jobs.remember_source(conn, subdomain, dialect)

        try:
            await self.store.transact(work, "remembering what sites showed")
        except db.DatabaseError as error:
            logger.warning("Could not keep what the sites showed of themselves: %s", error)

    def _background_task(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def database_lost(self, error: BaseException) -> None:
        """The database stayed down: stop everything, leaving jobs as they are (resumable)."""
        if self.database_down:
            return
        self.database_down = True
        self.stats.inc_value("civicband/db/errors")
        logger.error(
            "Database unreachable after %s retries (%s): stopping; jobs stay resumable",
            self.store.retries,
            db.one_line(error),
        )
        for job in self.jobs.values():
            job.move(ENDED)
        engine = self.crawler.engine
        if engine is not None:
            self._background_task(engine.close_spider_async(reason="civicband_database_lost"))

    def leases_renewed(self, lost: list[int], kept: list[int]) -> None:
        """The lease connection was cut and renewed: jobs whose lease went elsewhere stop now."""
        self._background_task(self._settle_leases(lost, kept))

    async def _settle_leases(self, lost: list[int], kept: list[int]) -> None:
        """Stop the jobs whose lock others took, then those whose token moved meanwhile."""
        for job_id in lost:
            if (job := self.get(job_id)) is not None:
                await self.lost(job)
        held = [job.lease for job_id in kept if (job := self.get(job_id)) is not None]
        if not held:
            return
        try:
            moved = await self.store.transact(
                lambda conn: jobs.moved_leases(conn, held), "checking the renewed leases"
            )
        except db.DatabaseError as error:
            logger.warning("Could not check the renewed leases (%s): their next write will", error)
            return
        for job_id in moved:
            if (job := self.get(job_id)) is not None:
                await self.lost(job)

    # ---- the end of the crawl -----------------------------------------------------------------

    async def spider_closed(self, reason: str) -> None:
        """Stop every step, pause the jobs still held, and report every job this process had."""
        tasks = [task for job in self.jobs.values() for task in job.tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        held = [job for job in self.jobs.values() if not job.stopped]
        summaries: list[dict[str, Any]] = []
        if self.store.is_open and not self.database_down:
            summaries = await self._pause_and_summarise(held)
        self.crawler.signals.send_catch_log(civicband_signals.jobs_closed, summaries=summaries)

    async def _pause_and_summarise(self, held: list[ActiveJob]) -> list[dict[str, Any]]:
        try:
            paused = await self.store.transact(
                lambda conn: jobs.pause(conn, [job.lease for job in held]), "pausing jobs"
            )
        except db.DatabaseError as error:
            logger.error("Could not mark jobs %s paused: %s", [j.job_id for j in held], error)
            return []
        for job_id in paused:
            self.outcomes[job_id] = "paused"
        if paused:
            self.stats.inc_value("civicband/jobs/paused", len(paused))
            logger.info("Paused jobs %s; resume with -a resume=true or the same JOBDIR", paused)
        for job in held:
            await self.store.release(job.job_id)
        self.jobs.clear()
        try:
            return await self.store.transact(
                lambda conn: jobs.summaries(conn, sorted(self.touched)), "summarising jobs"
            )
        except db.DatabaseError as error:
            logger.error("Could not read the jobs for the summary: %s", error)
            return []


__all__ = ["CATCHING_UP", "FETCHING", "VERIFYING", "ActiveJob", "JobEnded", "Registry"]
