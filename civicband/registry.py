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
from civicband.catchup import CatchUp
from civicband.claims import Claims
from civicband.lifecycle import (
    CATCHING_UP,
    ENDED,
    VERIFYING,
    ActiveJob,
    Exhausted,
    Failed,
    Restart,
)
from civicband.middlewares import RATE_LIMIT_WAITS
from civicband.source import Source, SourceError, Stopping
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
        self.claims = Claims(self)
        self._background: set[asyncio.Task] = set()

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        """Wire the parts once the spider opens; pause what is held when it closes."""
        registry = cls(crawler)
        crawler.signals.connect(registry.spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(registry.claims.spider_closed, signal=signals.spider_closed)
        crawler.signals.connect(registry.request_waiting, signal=civicband_signals.request_waiting)
        crawler.signals.connect(
            registry.claims.leases_renewed, signal=civicband_signals.leases_renewed
        )
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

    # ---- a job's life ----------------------------------------------------------------------

    def add(self, claim: jobs.Claim, run_id: int, **options: bool) -> ActiveJob:
        """A job this process has just claimed (options: allow_shrink, repair, exact)."""
        job = ActiveJob(claim, run_id, {"exact": False, **options})
        self.jobs[job.job_id] = job
        self.touched[job.job_id] = (job.subdomain, job.document_type)
        return job

    def start(self, job: ActiveJob) -> Request | None:
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
        """A full pass starts: its source count for progress, and its first page's request."""
        self.spawn(job, self._take_count(job), "counting the source's rows")
        return self.crawler.spider.page_request(job)  # the civicband spider, which pages

    async def _take_count(self, job: ActiveJob) -> None:
        try:
            job.expect(await self.source.count(job.subdomain, job.document_type))
        except (SourceError, Stopping) as error:
            logger.debug("%s: no source count for progress: %s", job, error)

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

    def last_page_fetched(self, job: ActiveJob) -> None:
        """A full pass has fetched its last page: verification asks the source's digest now."""
        self.verify.ask_early(job)

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
            if isinstance(error, JobEnded):
                return  # the job ended and said why
            if isinstance(error, Stopping) and not self.crawler.crawling:
                return  # the crawl stops: the job is paused
            logger.error("%s: unexpected error in %s", job, what, exc_info=error)
            message = f"unexpected error in {what}: {type(error).__name__}: {db.one_line(error)}"
            self.spawn(job, self.fail(job, message), "recording a failure")

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
                self.claims.crawl(self._paging(job))
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
        status = "failed"
        try:
            await self.store.transact(
                lambda conn: jobs.fail(conn, job.lease, error, retries_exhausted=retries_exhausted),
                f"recording the failure of {job.lease}",
            )
        except jobs.LeaseLost:
            status = "lost"
        except db.DatabaseError as problem:
            self.stats.inc_value("civicband/db/errors")
            logger.error("%s: could not record its failure (%s): %s", job, problem, error)
        finally:  # whatever happened to the write, the job leaves: never held with no step
            if status == "failed":
                self.stats.inc_value("civicband/jobs/failed")
                logger.error("%s failed: %s", job, error)
            await self._leave(job, status)

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
        self.verify.forget(job)
        current = asyncio.current_task()
        for task in list(job.tasks):
            if task is not current:
                task.cancel()
        if not self.database_down:
            await self.store.release(job.job_id)
            self.background(self.claims.remember_dialects())
        self.claims.job_ended()

    def background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run work that belongs to no job (a refill, a lease check), keeping it referenced."""
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
        current = asyncio.current_task()
        for job in self.jobs.values():
            job.move(ENDED)
            for task in job.tasks:
                if task is not current:
                    task.cancel()
        engine = self.crawler.engine
        if engine is not None:
            self.background(engine.close_spider_async(reason="civicband_database_lost"))
