"""This process's jobs: what each holds, what it fetches next, and how it ends.

The spider, the gate, the pipeline and the extensions read and change a job only through the
Registry; its database side goes through civicband/jobs.py, fenced by the job's lease token.
Control never travels as items: a job that fails, is lost or ends says so here, once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Self

from scrapy import Request, signals
from scrapy.crawler import Crawler

from civicband import db, jobs, mirror
from civicband import signals as civicband_signals
from civicband.digest import Digest
from civicband.middlewares import RATE_LIMIT_WAITS
from civicband.store import Store

if TYPE_CHECKING:
    from civicband.exact import Exact

logger = logging.getLogger(__name__)

FETCHING, CATCHING_UP, VERIFYING = "fetching", "catching up", "verifying"


@dataclass(eq=False)
class ActiveJob:
    """One job this process holds."""

    lease: jobs.Lease
    mode: str
    run_id: int
    allow_shrink: bool = False
    repair: bool = False  # a catch-up that must never become a full pass
    exact: bool = False  # judged by comparing every value, not by the digests alone
    state: str = FETCHING
    cursor: str | None = None  # the page a full pass fetches next
    inflight: bool = False  # its next page is being downloaded
    last_id: str | None = None  # the highest id of the last page parsed
    stopped: bool = False
    reissued: int = 0
    write_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    tasks: set[asyncio.Task] = field(default_factory=set)
    # progress: rows received by this job (earlier attempts included) and the source's count
    rows_done: int = 0
    rows_expected: int | None = None
    rows_at_claim: int = 0
    claimed_at: float = field(default_factory=time.monotonic)
    waiting: str | None = None  # "rate limited" or "backing off" while its request waits

    @property
    def job_id(self) -> int:
        """The job's id in backfill_jobs."""
        return self.lease.job_id

    @property
    def subdomain(self) -> str:
        """The site."""
        return self.lease.subdomain

    @property
    def document_type(self) -> str:
        """agenda or minutes."""
        return self.lease.document_type

    def __str__(self) -> str:
        return f"Job {self.job_id} {self.subdomain}/{self.document_type}"


class Registry:
    """The jobs this process runs, and every way one of them ends."""

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.stats = crawler.stats
        self.jobs: dict[int, ActiveJob] = {}
        self.touched: dict[int, tuple[str, str]] = {}
        self.outcomes: dict[int, str] = {}  # how each job left this process, for the summary
        self.site_failures: dict[str, str] = {}  # named sites that never became jobs, and why
        self.database_down = False
        self._settling: set[asyncio.Task] = set()

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        """Close held jobs when the spider closes."""
        registry = cls(crawler)
        crawler.signals.connect(registry.spider_closed, signal=signals.spider_closed)
        crawler.signals.connect(registry.request_waiting, signal=civicband_signals.request_waiting)
        crawler.signals.connect(registry.leases_renewed, signal=civicband_signals.leases_renewed)
        return registry

    def request_waiting(self, request: Request, why: str | None) -> None:
        """A request of a job waits out a backoff or a rate limit, or stopped waiting."""
        job = self.get(request.meta.get("job_id"))
        if job is not None:
            job.waiting = why

    @property
    def store(self) -> Store:
        """The crawl's database."""
        store = self.crawler.get_extension(Store)
        assert store is not None, "civicband.store.Store must be in EXTENSIONS"
        return store

    # ---- holding jobs -----------------------------------------------------------------------

    def add(
        self,
        claim: jobs.Claim,
        run_id: int,
        *,
        allow_shrink: bool,
        repair: bool,
        exact: bool = False,
    ) -> ActiveJob:
        """A job this process has just claimed."""
        job = ActiveJob(
            lease=claim.lease,
            mode=claim.mode,
            run_id=run_id,
            allow_shrink=allow_shrink,
            repair=repair,
            exact=exact,
            cursor=claim.cursor,
            rows_done=claim.pages_fetched,
            rows_at_claim=claim.pages_fetched,
        )
        self.jobs[job.job_id] = job
        self.touched[job.job_id] = (job.subdomain, job.document_type)
        return job

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
        retry = request.meta.get("retry_times", 0) > 0 or request.meta.get(RATE_LIMIT_WAITS, 0) > 0
        if job is None:
            return "not running here"
        if job.state != FETCHING or job.mode != jobs.FULL:
            return "not paging"
        if request.meta.get("cursor") != job.cursor:
            return "not its next page"
        if job.inflight and not retry:
            return "already being fetched"
        job.inflight = True
        request.meta["token"] = job.lease.token  # a request restored from JOBDIR names the old one
        return None

    def spawn(self, job: ActiveJob, work: Coroutine[Any, Any, None], what: str) -> None:
        """Run one step of a job; anything it did not expect fails the job, visibly."""
        task = asyncio.ensure_future(work)
        job.tasks.add(task)

        def done(finished: asyncio.Task) -> None:
            job.tasks.discard(finished)
            if finished.cancelled() or (error := finished.exception()) is None:
                return
            logger.error("%s: unexpected error in %s", job, what, exc_info=error)
            message = f"unexpected error in {what}: {type(error).__name__}: {db.one_line(error)}"
            asyncio.ensure_future(self.fail(job, message))

        task.add_done_callback(done)

    def busy(self, job: ActiveJob) -> bool:
        """Whether a step of the job is still running (a catch-up, a verification, a count)."""
        return bool(job.tasks)

    # ---- how a job ends -----------------------------------------------------------------------

    def exhausted(
        self, job: ActiveJob, source_digest: Digest | None = None, exact: Exact | None = None
    ) -> None:
        """Nothing more to fetch: verification takes over."""
        if job.stopped:
            return
        job.state = VERIFYING
        self.crawler.signals.send_catch_log(
            civicband_signals.job_exhausted, job=job, source_digest=source_digest, exact=exact
        )

    async def fail(self, job: ActiveJob, error: str, *, retries_exhausted: bool = False) -> None:
        """The job cannot go on here: failed with why (fenced), its cursor kept for resume."""
        if job.stopped:
            return
        job.stopped = True
        try:
            await self.store.transact(
                lambda conn: jobs.fail(conn, job.lease, error, retries_exhausted=retries_exhausted),
                f"recording the failure of {job.lease}",
            )
        except jobs.LeaseLost:
            await self._lost(job)
            return
        except db.DatabaseError as problem:
            self.stats.inc_value("civicband/db/errors")
            logger.error("%s: could not record its failure (%s): %s", job, problem, error)
        self.stats.inc_value("civicband/jobs/failed")
        logger.error("%s failed: %s", job, error)
        await self.end(job, "failed")

    async def lost(self, job: ActiveJob) -> None:
        """Another process claimed the job since this one did: stop it here, writing nothing."""
        if job.stopped:
            return
        job.stopped = True
        await self._lost(job)

    def leases_renewed(self, lost: list[int], kept: list[int]) -> None:
        """The lease connection was cut and renewed: jobs whose lease went elsewhere stop now."""
        task = asyncio.ensure_future(self._settle_leases(lost, kept))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

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

    async def _lost(self, job: ActiveJob) -> None:
        self.stats.inc_value("civicband/jobs/lost")
        logger.warning("%s: its lease was taken by another process; stopped here", job)
        await self.end(job, "lost")

    async def end(self, job: ActiveJob, status: str) -> None:
        """The job leaves this process: its lease goes back and more work may be claimed."""
        job.stopped = True
        if self.jobs.pop(job.job_id, None) is None:
            return
        self.outcomes[job.job_id] = status
        current = asyncio.current_task()
        for task in list(job.tasks):
            if task is not current:
                task.cancel()
        if not self.database_down:
            await self.store.release(job.job_id)
        self.crawler.signals.send_catch_log(civicband_signals.job_ended, job=job, status=status)

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
            job.stopped = True
        engine = self.crawler.engine
        if engine is not None:
            asyncio.ensure_future(engine.close_spider_async(reason="civicband_database_lost"))

    # ---- the end of the crawl -----------------------------------------------------------------

    async def spider_closed(self, reason: str) -> None:
        """Stop every step, pause the jobs still held, and report every job this process had."""
        tasks = [task for job in self.jobs.values() for task in job.tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        held = [job for job in self.jobs.values() if not job.stopped]
        summaries: list[dict[str, Any]] = []
        purged = None
        if self.store.is_open and not self.database_down:
            summaries = await self._pause_and_summarise(held)
            purged = await self._purge_tombstones()
        self.crawler.signals.send_catch_log(
            civicband_signals.jobs_closed, summaries=summaries, purged=purged
        )

    async def _purge_tombstones(self) -> int | None:
        """Once per crawl: forget removed pages kept longer than CIVICBAND_TOMBSTONE_DAYS."""
        days = self.crawler.settings.getfloat("CIVICBAND_TOMBSTONE_DAYS")
        try:
            purged = await self.store.transact(
                lambda conn: mirror.purge_tombstones(conn, days), "purging tombstones"
            )
        except db.DatabaseError as error:
            logger.error("Could not purge old tombstones: %s", error)
            return None
        self.stats.set_value("civicband/tombstones/purged", purged)
        return purged

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
