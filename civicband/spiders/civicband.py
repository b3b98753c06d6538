"""The `civicband` spider: claim jobs from the run's queue and page through full passes by `next`.

It is the dispatcher: it opens (or joins) the run, claims at most CIVICBAND_MAX_ACTIVE_JOBS
jobs and more as they end, and starts each the way its mode says: a full pass pages here, a
catch-up runs in civicband.catchup, verification in civicband.extensions.verify. Everything it
knows about a job it reads from, and tells, the registry.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any, Self

from scrapy import Request, signals
from scrapy.crawler import Crawler
from scrapy.downloadermiddlewares.retry import get_retry_request
from scrapy.exceptions import DontCloseSpider, IgnoreRequest
from scrapy.http import Response
from scrapy.settings import BaseSettings
from scrapy.spidermiddlewares.httperror import HttpError
from twisted.python.failure import Failure

from civicband import datasette, jobs
from civicband import signals as civicband_signals
from civicband.args import (
    ArgumentError,
    SpiderArguments,
    parse_arguments,
    parse_batch_size,
)
from civicband.catchup import CatchUp
from civicband.config import check_number_settings, check_settings
from civicband.db import DatabaseError, DatabaseUnavailable, one_line
from civicband.items import PageItem
from civicband.middlewares import RETRIES_EXHAUSTED
from civicband.registry import FETCHING, ActiveJob, Registry
from civicband.source import REDIRECTS, Source, SourceError, Stopping
from civicband.spiders.base import StoreSpider

logger = logging.getLogger(__name__)

# Times one job's next page is asked again when the crawl went idle without it (a lost request).
MAX_REISSUES = 3


def wake_engine(crawler: Crawler) -> None:
    """Have the engine look again whether the spider is idle.

    Scrapy re-checks only when a request or item moves, or on its 5 s heartbeat; when the last
    job ends in a database step, nothing moves. Scrapy has no public call for this.
    """
    slot = getattr(crawler.engine, "_slot", None)
    if slot is not None:
        slot.nextcall.schedule()


class CivicbandSpider(StoreSpider):
    """Mirror agendas and minutes of one, several or all civic.band sites."""

    name = "civicband"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.arguments: SpiderArguments = parse_arguments(kwargs)
        super().__init__(
            *args, **{k: v for k, v in kwargs.items() if k not in self.arguments.names}
        )
        self.run_id = 0
        self._refilling = False
        self._more = True  # the queue may hold work this process could claim
        self._told_busy: set[int] = set()

    @staticmethod
    def check_arguments(
        kwargs: dict[str, Any], settings: BaseSettings
    ) -> tuple[SpiderArguments, int, int]:
        """Validate arguments and settings before any request: (arguments, batch, max jobs)."""
        arguments = parse_arguments(kwargs)
        check_settings(settings)
        try:
            datasette.check_site_url(settings.get("CIVICBAND_SITE_URL"))
        except ValueError as error:
            raise ArgumentError(str(error)) from None
        batch_size = arguments.batch_size
        if batch_size is None:
            try:
                batch_size = parse_batch_size(settings.get("CIVICBAND_BATCH_SIZE"))
            except ArgumentError as error:
                raise ArgumentError(f"CIVICBAND_BATCH_SIZE: {error}") from None
        check_number_settings(settings)
        max_active = settings.getint("CIVICBAND_MAX_ACTIVE_JOBS")
        return arguments, batch_size, max_active

    @classmethod
    def from_crawler(cls, crawler: Crawler, *args: Any, **kwargs: Any) -> Self:
        """Build the spider from checked arguments and settings."""
        spider = super().from_crawler(crawler, *args, **kwargs)
        _, spider.batch_size, spider.max_active = cls.check_arguments(kwargs, crawler.settings)
        # JOBDIR implies resume: rerunning the same command continues the same jobs.
        spider.resume = spider.arguments.resume or bool(crawler.settings.get("JOBDIR"))
        crawler.signals.connect(spider.spider_idle, signal=signals.spider_idle)
        crawler.signals.connect(spider.job_ended, signal=civicband_signals.job_ended)
        crawler.signals.connect(spider.job_restarted, signal=civicband_signals.job_restarted)
        return spider

    @property
    def registry(self) -> Registry:
        """This process's jobs."""
        registry = self.crawler.get_extension(Registry)
        assert registry is not None, "civicband.registry.Registry must be in EXTENSIONS"
        return registry

    @property
    def source(self) -> Source:
        """How the sites are asked."""
        source = self.crawler.get_extension(Source)
        assert source is not None, "civicband.source.Source must be in EXTENSIONS"
        return source

    # ---- the run and its queue ----------------------------------------------------------------

    async def start(self) -> AsyncIterator[Request]:
        """Open the database, open or join the run, and start the first jobs claimed."""
        try:
            await self.store.open()
            unknown = await self._open_run()
        except DatabaseError as error:
            raise self._stop(str(error), "civicband_database_unavailable") from None
        for subdomain in unknown:
            yield self._probe(subdomain)
        for request in await self._claim():
            yield request

    async def _open_run(self) -> list[str]:
        """Open or join the run and queue its known sites' work; returns sites never seen."""
        arguments = self.arguments
        async with self.store.connection() as conn:
            if arguments.subdomains == ["all"]:
                sites = await jobs.all_subdomains(conn)
                if not sites:
                    raise self._stop(
                        "subdomain=all: the municipalities table is empty;"
                        " run `scrapy crawl civicband-sites` first, or name sites",
                        "civicband_bad_argument",
                    )
                known = set(sites)
            else:
                sites = arguments.subdomains
                known = await jobs.known_subdomains(conn, sites)
        unknown = [site for site in sites if site not in known]
        if unknown and arguments.mode in ("verify_only", "repair"):
            for site in unknown:
                self.crawler.stats.inc_value("civicband/sites/failed")
                logger.error("%s is not in municipalities: nothing to verify or repair", site)
            unknown = []
        run = jobs.RunArguments(
            subdomains=tuple(sorted(arguments.subdomains)),
            document_types=arguments.document_types,
            mode=arguments.mode,
            allow_shrink=arguments.allow_shrink,
            exact=arguments.exact,
        )

        async def work(conn: Any) -> tuple[int, bool, jobs.Queued]:
            run_id, joined = await jobs.open_run(conn, run, self.store.join_run)
            queued = await self._enqueue(conn, run_id, [s for s in sites if s in known])
            self.source.recall(await jobs.source_facts(conn, sorted(known)))
            return run_id, joined, queued

        self.run_id, joined, queued = await self.store.transact(work, "opening the run")
        self._log_queued(joined, queued)
        return unknown

    async def _enqueue(self, conn: Any, run_id: int, sites: list[str]) -> jobs.Queued:
        wanted = [(site, kind) for site in sites for kind in self.arguments.document_types]
        return await jobs.enqueue(
            conn, run_id, wanted, mode=self.arguments.mode, resume=self.resume
        )

    def _log_queued(self, joined: bool, queued: jobs.Queued) -> None:
        how = "joined the live run" if joined else "started run"
        logger.info(
            "Run %s: %s; queued %d new jobs, continued %d, replaced %d abandoned",
            self.run_id,
            how,
            queued.added,
            queued.reopened,
            queued.abandoned,
        )
        if queued.taken_over:
            self.crawler.stats.inc_value("civicband/jobs/taken_over", queued.taken_over)
        for site, kind, job_id in queued.skipped:
            self.crawler.stats.inc_value("civicband/jobs/skipped")
            logger.info(
                "Job %s %s/%s is queued or running in another process: skipped", job_id, site, kind
            )

    def _probe(self, subdomain: str) -> Request:
        """A named site the mirror does not know: it joins once its database answers with JSON."""
        return self.source.request(
            f"{self.source.root(subdomain)}/{datasette.DATABASE}.json",
            callback=self.parse_probe,
            errback=self.probe_failed,
            subdomain=subdomain,
        )

    async def parse_probe(self, response: Response) -> AsyncIterator[Request]:
        """JSON: add the site and queue its work; a redirect: an unknown site."""
        subdomain = response.meta["subdomain"]
        if response.status in REDIRECTS:
            location = (response.headers.get("Location") or b"?").decode("latin-1")
            self._site_failed(subdomain, f"unknown site: {response.url} redirects to {location}")
            return
        try:
            datasette.parse_object(response.body)
        except datasette.SourceError as error:
            retry = get_retry_request(response.request, spider=self, reason="civicband_bad_answer")
            if retry is not None:
                yield retry
            else:
                self._site_failed(subdomain, f"{error} at {response.url}")
            return

        async def work(conn: Any) -> tuple[bool, jobs.Queued]:
            await jobs.lock_queue(conn)
            added = await jobs.add_municipality(conn, subdomain)
            return added, await self._enqueue(conn, self.run_id, [subdomain])

        try:
            added, queued = await self.store.transact(work, f"adding {subdomain}")
        except DatabaseError as error:
            self.crawler.stats.inc_value("civicband/db/errors")
            message = f"could not add it to municipalities: {error}"
            self.registry.site_failures[subdomain] = message
            logger.error("%s: %s", subdomain, message)
            return
        if added:
            self.crawler.stats.inc_value("civicband/sites/added")
            logger.info("%s answers with JSON: added to municipalities", subdomain)
        self._log_queued(True, queued)
        self._more = True
        for request in await self._claim():
            yield request

    def probe_failed(self, failure: Failure) -> None:
        """A new site that never answered (network, HTTP errors after retries)."""
        if failure.check(IgnoreRequest) and not failure.check(HttpError):
            return
        request = failure.request  # type: ignore[attr-defined]
        self._site_failed(request.meta["subdomain"], _describe(failure, request))

    def _site_failed(self, subdomain: str, error: str) -> None:
        self.crawler.stats.inc_value("civicband/sites/failed")
        self.registry.site_failures[subdomain] = error
        for kind in self.arguments.document_types:
            logger.error("%s/%s: %s", subdomain, kind, error)

    # ---- claiming and starting jobs -----------------------------------------------------------

    async def _claim(self) -> list[Request]:
        """Claim what this process may still run, start each job, return their first requests."""
        registry = self.registry
        limit = self.max_active - len(registry.jobs)
        if limit <= 0 or not self.crawler.crawling or registry.database_down:
            return []
        store = self.store
        # Leases of the attempt in flight. A retry (its COMMIT answer lost, say) first gives
        # them back: whether that claim committed is unknown, and a lease this session still
        # held would hide the jobs it took from the claim that retries it.
        taken: list[int] = []
        retried: set[int] = set()  # every attempt's: any of them may be the one that committed

        async def release_taken() -> None:
            for job_id in taken:
                await store.release(job_id)
            taken.clear()

        async def work(conn: Any) -> list[jobs.Claim]:
            retried.update(taken)
            await release_taken()

            async def lease(job_id: int) -> bool:
                if await store.try_lease(job_id):
                    taken.append(job_id)
                    return True
                return False

            claims = await jobs.claim(conn, self.run_id, limit, lease, retried=retried)
            if not claims:
                busy = await jobs.busy_elsewhere(conn, self.run_id, registry.jobs)
                self._tell_busy(busy)
            return claims

        try:
            claims = await store.transact(work, "claiming jobs")
        except DatabaseUnavailable as error:
            await release_taken()
            await registry.database_lost(error)
            return []
        except DatabaseError as error:
            await release_taken()
            self.crawler.stats.inc_value("civicband/db/errors")
            logger.error("Could not claim jobs: %s", error)
            return []
        except BaseException:  # cancelled, or a bug: no lease may outlive the claim that took it
            await release_taken()
            raise
        if not claims:
            self._more = False
        requests: list[Request] = []
        for claim in claims:
            requests.extend(self._start_job(claim))
        return requests

    def _tell_busy(self, busy: list[tuple[int, str, str]]) -> None:
        for job_id, site, kind in busy:
            if job_id not in self._told_busy:
                self._told_busy.add(job_id)
                self.crawler.stats.inc_value("civicband/jobs/skipped")
                logger.info(
                    "Job %s %s/%s is running in another process: skipped", job_id, site, kind
                )

    def _start_job(self, claim: jobs.Claim) -> list[Request]:
        arguments = self.arguments
        job = self.registry.add(
            claim,
            self.run_id,
            allow_shrink=arguments.allow_shrink,
            repair=arguments.repair,
            exact=arguments.exact,
        )
        stats = self.crawler.stats
        stats.inc_value("civicband/jobs/started")
        if claim.took_over:
            stats.inc_value("civicband/jobs/taken_over")
        if claim.cursor is not None or claim.exhausted or claim.pages_fetched:
            stats.inc_value("civicband/jobs/resumed")
            logger.info(
                "%s (%s) %s from cursor %r",
                job,
                claim.mode,
                "taken over" if claim.took_over else "resumed",
                claim.cursor,
            )
        else:
            logger.info("%s started (%s)", job, claim.mode)
        if claim.exhausted or claim.mode == jobs.VERIFY:
            self.registry.exhausted(job)  # only verification is left
            return []
        if claim.mode == jobs.CATCHUP:
            catchup = self.crawler.get_extension(CatchUp)
            assert catchup is not None, "civicband.catchup.CatchUp must be in EXTENSIONS"
            catchup.start(job)
            return []
        return self._paging(job)

    def _paging(self, job: ActiveJob) -> list[Request]:
        """A full pass starts (or goes on): its source count for progress, and its next page."""
        job.state = FETCHING
        self.registry.spawn(job, self._take_count(job), "counting the source's rows")
        return [self.page_request(job)]

    async def _take_count(self, job: ActiveJob) -> None:
        try:
            job.rows_expected = await self.source.count(job.subdomain, job.document_type)
        except (SourceError, Stopping) as error:
            logger.debug("%s: no source count for progress: %s", job, error)

    def job_restarted(self, job: ActiveJob) -> None:
        """A catch-up became a full pass: page it from the start."""
        for request in self._paging(job):
            self.crawler.engine.crawl(request)

    def job_ended(self, job: ActiveJob, status: str) -> None:
        """A job left this process: keep what its site showed of itself, and claim more work."""
        self._more = True
        self._refill()
        learned = self.source.learned()
        if learned and not self.registry.database_down:
            asyncio.ensure_future(self._remember(learned))

    async def _remember(self, learned: list[tuple[str, str]]) -> None:
        async def work(conn: Any) -> None:
            for fact in learned:
                await jobs.remember_source(conn, *fact)

        try:
            await self.store.transact(work, "remembering what sites showed")
        except DatabaseError as error:
            logger.warning("Could not keep what the sites showed of themselves: %s", error)

    def _refill(self) -> None:
        if self._refilling or not self.crawler.crawling:
            return
        self._refilling = True

        async def refill() -> None:
            try:
                for request in await self._claim():
                    self.crawler.engine.crawl(request)
            finally:
                self._refilling = False
                wake_engine(self.crawler)

        asyncio.ensure_future(refill())

    def spider_idle(self) -> None:
        """Stay open while jobs run or the queue may hold more; ask again for a lost page."""
        registry = self.registry
        if self._refilling:
            raise DontCloseSpider
        if registry.jobs:
            for job in list(registry.jobs.values()):
                self._reissue_if_stalled(job)
            raise DontCloseSpider
        if self._more and self.crawler.crawling and not registry.database_down:
            self._refill()
            raise DontCloseSpider

    def _reissue_if_stalled(self, job: ActiveJob) -> None:
        """Idle means nothing is queued, downloading or being stored: a paging job is stuck."""
        if job.stopped or job.mode != jobs.FULL or job.state != FETCHING or job.inflight:
            return
        if self.registry.busy(job) or job.write_lock.locked():
            return
        if job.reissued >= MAX_REISSUES:
            error = "stalled: the request for its next page was lost"
            asyncio.ensure_future(self.registry.fail(job, error))
            return
        job.reissued += 1
        self.crawler.stats.inc_value("civicband/requests/reissued")
        logger.warning("%s: no request for its next page was in flight; asking again", job)
        self.crawler.engine.crawl(self.page_request(job))

    # ---- paging -------------------------------------------------------------------------------

    def page_request(self, job: ActiveJob) -> Request:
        """The job's next API page."""
        return self.source.request(
            self.source.page_url(job.subdomain, job.document_type, self.batch_size, job.cursor),
            callback=self.parse_page,
            errback=self.page_failed,
            statuses=[400],
            job_id=job.job_id,
            token=job.lease.token,
            subdomain=job.subdomain,
            document_type=job.document_type,
            cursor=job.cursor,
        )

    async def parse_page(self, response: Response) -> AsyncIterator[Any]:
        """Turn one answer into a PageItem and the request for the page after it."""
        meta = response.meta
        job = self.registry.get(meta["job_id"], meta.get("token"))
        if job is None or meta["cursor"] != job.cursor:
            return  # stopped, lost, or claimed anew since: its pages are not ours to store
        job.inflight = False
        for output in self._read_page(job, response):
            yield output

    def _read_page(self, job: ActiveJob, response: Response) -> Iterator[Any]:
        meta = response.meta
        if response.status in REDIRECTS:
            location = (response.headers.get("Location") or b"?").decode("latin-1")
            self._fail(job, f"unknown site: {response.url} redirects to {location}")
            return
        if response.status == 400:
            limit = datasette.page_size_limit(response.status, response.body)
            if limit is not None and limit < self.source.page_limits.get(job.subdomain, 10**9):
                # A Datasette whose max_returned_rows is below our batch size: ask smaller pages.
                self.source.page_limits[job.subdomain] = limit
                logger.info("%s accepts pages of at most %d rows", job.subdomain, limit)
                yield self.page_request(job)
                return
            exhausted = bool(meta.get(RETRIES_EXHAUSTED))  # 0.65's interrupted pages are 400s
            self._fail(job, f"HTTP 400 at {response.url}", retries_exhausted=exhausted)
            return
        try:
            page = datasette.parse_table_page(response.body)
        except datasette.SourceError as error:
            retry = get_retry_request(response.request, spider=self, reason="civicband_bad_answer")
            if error.retryable and retry is not None:
                job.inflight = True
                yield retry
                return
            self._fail(job, f"{error} at {response.url}", retries_exhausted=True)
            return
        problem = self._not_advancing(job, meta["cursor"], page)
        if problem:
            self._fail(job, f"the source misbehaves: {problem} at {response.url}")
            return
        self.source.learn(job.subdomain, response.body)
        job.cursor = page.next
        if page.next is not None:
            yield self.page_request(job)
        yield PageItem(
            job_id=job.job_id,
            token=job.lease.token,
            subdomain=job.subdomain,
            document_type=job.document_type,
            cursor_in=meta["cursor"],
            cursor_out=page.next,
            rows=page.rows,
            url=response.url,
            unicode_checked=page.unicode_checked,
        )

    @staticmethod
    def _not_advancing(job: ActiveJob, cursor: str | None, page: datasette.TablePage) -> str:
        """Why this page does not move the job forward (`next` repeats, ids go back), or ''."""
        if page.next is not None and page.next == cursor:
            return f"`next` does not advance ({page.next!r} again)"
        if page.next is not None and not page.rows:
            # Datasette's `next` is the last row's key: a page without rows has none to give.
            return f"a page without rows says more follow (`next` {page.next!r})"
        ids = [r["id"] for r in page.rows if isinstance(r, dict) and isinstance(r.get("id"), str)]
        if page.next is not None and not ids and cursor is not None:
            # NULL ids sort first, so only a first page may hold nothing else: past it, a page
            # with no id to advance by, and a `next`, would never end.
            return f"a page without ids says more follow (`next` {page.next!r})"
        if ids and job.last_id is not None and min(ids) <= job.last_id:
            return f"ids do not increase ({min(ids)!r} after {job.last_id!r})"
        if ids:
            job.last_id = max(ids)
        return ""

    def _fail(self, job: ActiveJob, error: str, *, retries_exhausted: bool = False) -> None:
        self.registry.spawn(
            job,
            self.registry.fail(job, error, retries_exhausted=retries_exhausted),
            "recording a failure",
        )

    async def page_failed(self, failure: Failure) -> None:
        """Retries are used up, or the answer was an error that retrying cannot fix."""
        if failure.check(IgnoreRequest) and not failure.check(HttpError):
            return  # dropped by the gate, or the crawl is stopping: never a job's failure
        request = failure.request  # type: ignore[attr-defined]
        job = self.registry.get(request.meta["job_id"], request.meta.get("token"))
        if job is None or request.meta["cursor"] != job.cursor:
            return
        job.inflight = False
        if not self.crawler.crawling:
            return  # stopping: the job is paused, not failed

        exhausted = True
        if failure.check(HttpError):
            status = failure.value.response.status
            exhausted = status >= 500 or status == 429 or bool(request.meta.get(RETRIES_EXHAUSTED))
        await self.registry.fail(job, _describe(failure, request), retries_exhausted=exhausted)


def _describe(failure: Failure, request: Request) -> str:
    """A failed request in one line: its status or error, and its URL."""
    if failure.check(HttpError):
        return f"HTTP {failure.value.response.status} at {failure.value.response.url}"
    return f"{failure.type.__name__}: {one_line(failure.value)} at {request.url}"
