"""The `civicband` spider: page through full passes by `next`, turning each answer into a PageItem.

It only pages. The Registry (civicband.registry) opens the run, claims jobs, runs catch-ups and
verifications, and says which page each job needs next; the spider builds that request, reads
the answer, and hands the page to the pipeline. Sites the mirror does not know yet are probed
here first: a probe is a request too.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from functools import cached_property
from typing import Any, ClassVar, Self

from scrapy import Request, signals
from scrapy.crawler import Crawler
from scrapy.downloadermiddlewares.retry import get_retry_request
from scrapy.exceptions import DontCloseSpider, IgnoreRequest
from scrapy.http import Response
from scrapy.settings import SETTINGS_PRIORITIES, BaseSettings
from scrapy.spidermiddlewares.httperror import HttpError
from twisted.python.failure import Failure

from civicband import datasette
from civicband.args import SpiderArguments, parse_arguments, parse_batch_size
from civicband.config import check_settings
from civicband.db import DatabaseError, one_line
from civicband.items import PageItem
from civicband.lifecycle import ActiveJob
from civicband.middlewares import RETRIES_EXHAUSTED
from civicband.registry import Registry
from civicband.runs import EmptyMunicipalities
from civicband.source import REDIRECTS, Source
from civicband.spiders.base import StoreSpider

logger = logging.getLogger(__name__)


class CivicbandSpider(StoreSpider):
    """Mirror agendas and minutes of one, several or all civic.band sites."""

    name = "civicband"
    # What only this spider uses: its jobs and their progress, the gate of their pages, and the
    # page transaction. Added to the project's component dicts (custom_settings would replace
    # them whole), the way Scrapy's add-ons add components.
    components: ClassVar[tuple[tuple[str, str, int], ...]] = (
        ("EXTENSIONS", "civicband.registry.Registry", 2),
        ("EXTENSIONS", "civicband.extensions.progress.Progress", 5),
        ("DOWNLOADER_MIDDLEWARES", "civicband.gate.CursorGate", 50),
        ("ITEM_PIPELINES", "civicband.pipelines.PostgresPipeline", 300),
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.arguments: SpiderArguments = parse_arguments(kwargs)
        super().__init__(
            *args, **{k: v for k, v in kwargs.items() if k not in self.arguments.names}
        )

    @classmethod
    def update_settings(cls, settings: BaseSettings) -> None:
        """The project's settings, plus this spider's own components."""
        super().update_settings(settings)
        for name, component, priority in cls.components:
            # Merged into the dict as it stands (a user's -s EXTENSIONS=... included), one
            # priority above it: Scrapy merges the runner's settings into a crawler it is handed
            # (the crawl command builds the crawler first), and an equal priority would win.
            merged = {**settings.getdict(name), component: priority}
            at = max((settings.getpriority(name) or 0) + 1, SETTINGS_PRIORITIES["spider"])
            settings.set(name, merged, priority=at)

    @staticmethod
    def check_arguments(kwargs: dict[str, Any], settings: BaseSettings) -> SpiderArguments:
        """Validate arguments and settings before any request; one line naming what is wrong."""
        arguments = parse_arguments(kwargs)
        check_settings(settings)
        return arguments

    @classmethod
    def from_crawler(cls, crawler: Crawler, *args: Any, **kwargs: Any) -> Self:
        """Build the spider from checked arguments and settings."""
        spider = super().from_crawler(crawler, *args, **kwargs)
        cls.check_arguments(kwargs, crawler.settings)
        spider.batch_size = spider.arguments.batch_size or parse_batch_size(
            crawler.settings.get("CIVICBAND_BATCH_SIZE")
        )
        # JOBDIR implies resume: rerunning the same command continues the same jobs.
        spider.resume = spider.arguments.resume or bool(crawler.settings.get("JOBDIR"))
        crawler.signals.connect(spider.spider_idle, signal=signals.spider_idle)
        return spider

    async def start(self) -> AsyncIterator[Request]:
        """Open the database and the run, probe sites never seen, page the jobs claimed."""
        try:
            await self.store.open()
            unknown = await self.registry.claims.open(self.arguments, resume=self.resume)
        except EmptyMunicipalities as error:
            raise self._stop(str(error), "civicband_bad_argument") from None
        except DatabaseError as error:
            raise self._stop(str(error), "civicband_database_unavailable") from None
        for subdomain in unknown:
            yield self.source.request(
                f"{self.source.root(subdomain)}/{datasette.DATABASE}.json",
                callback=self.parse_probe,
                errback=self.probe_failed,
                subdomain=subdomain,
            )
        for request in await self.registry.claims.claim():
            yield request

    @cached_property
    def registry(self) -> Registry:
        """This process's jobs (extensions are built after the spider: looked up once, here)."""
        return self._component(Registry)

    @cached_property
    def source(self) -> Source:
        """How the sites are asked."""
        return self._component(Source)

    def _component(self, kind: type) -> Any:
        component = self.crawler.get_extension(kind)
        assert component is not None, f"{kind.__module__}.{kind.__name__} must be in EXTENSIONS"
        return component

    def spider_idle(self) -> None:
        """Stay open while jobs run or the queue may hold more (the registry decides)."""
        if self.registry.claims.keep_open():
            raise DontCloseSpider

    # ---- sites never seen ---------------------------------------------------------------------

    async def parse_probe(self, response: Response) -> AsyncIterator[Request]:
        """JSON: the site joins the run; a redirect: an unknown site."""
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
        for request in await self.registry.claims.add_site(subdomain):
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
        if job is None or not job.answered(meta["cursor"]):
            return  # stopped, lost, or claimed anew since: its pages are not ours to store
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
            if limit is not None and limit < datasette.page_size_of(response.url):
                # A Datasette whose max_returned_rows is below our batch size: ask smaller pages.
                # Both tables of a site may hear so at once: the second asks again all the same.
                known = self.source.page_limits.get(job.subdomain)
                if known is None or limit < known:
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
                job.refetching()
                yield retry
                return
            self._fail(job, f"{error} at {response.url}", retries_exhausted=True)
            return
        problem = job.parsed(meta["cursor"], page.next, page.rows)
        if problem:
            self._fail(job, f"the source misbehaves: {problem} at {response.url}")
            return
        self.source.learn(job.subdomain, response.body)
        if page.next is not None:
            yield self.page_request(job)
        else:
            self.registry.last_page_fetched(job)
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
        if job is None or not job.answered(request.meta["cursor"]):
            return
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
