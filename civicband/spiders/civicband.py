"""The `civicband` spider: page through each site's agendas and minutes by Datasette's `next`."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Self

import psycopg
from scrapy import Request
from scrapy.crawler import Crawler
from scrapy.downloadermiddlewares.retry import get_retry_request
from scrapy.http import Response
from scrapy.settings import BaseSettings
from scrapy.spidermiddlewares.httperror import HttpError
from twisted.python.failure import Failure

from civicband import datasette, jobs
from civicband.args import ArgumentError, SpiderArguments, parse_arguments, parse_batch_size
from civicband.db import DatabaseError, one_line
from civicband.items import CountItem, JobFailed, PageItem, RepairItem
from civicband.middlewares import RETRIES_EXHAUSTED, check_settings
from civicband.repair import RepairState, chunks, differing_buckets, plan_bucket
from civicband.spiders.base import StoreSpider, service_headers

logger = logging.getLogger(__name__)

REDIRECTS = [301, 302, 303, 307, 308]
# Ids per by-id fetch: they travel in the URL, which Scrapy caps at URLLENGTH_LIMIT (2083).
REPAIR_FETCH_SIZE = 60


def sql_answer(method: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    """Hand a repair callback the rows of an SQL answer; dialect retries and errors stop here."""

    @functools.wraps(method)
    async def callback(self: CivicbandSpider, response: Response) -> AsyncIterator[Any]:
        rows, instead = self._sql_rows(response)
        if rows is None:
            for output in instead:
                yield output
            return
        async for output in method(self, response, rows):
            yield output

    return callback


class CivicbandSpider(StoreSpider):
    """Mirror agendas and minutes of one, several or all civic.band sites."""

    name = "civicband"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.arguments: SpiderArguments = parse_arguments(kwargs)
        super().__init__(
            *args, **{k: v for k, v in kwargs.items() if k not in self.arguments.names}
        )

    @staticmethod
    def check_arguments(
        kwargs: dict[str, Any], settings: BaseSettings
    ) -> tuple[SpiderArguments, str, int]:
        """Validate arguments and settings before any request: (arguments, site URL, batch size)."""
        arguments = parse_arguments(kwargs)
        if arguments.repair and arguments.verify_only:
            raise ArgumentError("repair: give either repair=true or verify_only=true, not both")
        check_settings(settings)
        try:
            site_url = datasette.check_site_url(settings.get("CIVICBAND_SITE_URL"))
        except ValueError as error:
            raise ArgumentError(str(error)) from None
        batch_size = arguments.batch_size
        if batch_size is None:
            try:
                batch_size = parse_batch_size(settings.get("CIVICBAND_BATCH_SIZE"))
            except ArgumentError as error:
                raise ArgumentError(f"CIVICBAND_BATCH_SIZE: {error}") from None
        return arguments, site_url, batch_size

    @classmethod
    def from_crawler(cls, crawler: Crawler, *args: Any, **kwargs: Any) -> Self:
        """Build the spider from checked arguments and settings."""
        spider = super().from_crawler(crawler, *args, **kwargs)
        settings = crawler.settings
        _, spider.site_url, spider.batch_size = cls.check_arguments(kwargs, settings)
        spider.headers = service_headers(settings, "application/json")
        spider.download_slot = settings.get("CIVICBAND_DOWNLOAD_SLOT")
        # JOBDIR implies resume: rerunning the same command continues the same jobs.
        spider.resume = spider.arguments.resume or bool(settings.get("JOBDIR"))
        # Per running job, the cursor of the page to fetch next; the gate admits nothing else.
        spider.active = {}
        spider.inflight = set()
        # Which Datasette line each site speaks, learnt from its table pages (SQL URLs differ).
        spider.dialects = {}
        spider.repairs = {}
        spider.ready = asyncio.Event()
        return spider

    async def start(self) -> AsyncIterator[Request]:
        """Open the database, resolve the sites, and start one job per (site, type)."""
        try:
            await self.store.open()
            async with self.store.connection() as conn:
                subdomains = self.arguments.subdomains
                if subdomains == ["all"]:
                    subdomains = await jobs.all_subdomains(conn)
                    if not subdomains:
                        raise self._stop(
                            "subdomain=all: the municipalities table is empty;"
                            " run `scrapy crawl civicband-sites` first, or name sites",
                            "civicband_bad_argument",
                        )
                    known = set(subdomains)
                else:
                    known = await jobs.known_subdomains(conn, subdomains)
        except DatabaseError as error:
            raise self._stop(str(error), "civicband_database_unavailable") from None
        queued = self.queued()
        restored = dict(queued)
        queued.clear()
        try:
            for subdomain in subdomains:
                for document_type in self.arguments.document_types:
                    if subdomain not in known:
                        if self.arguments.verify_only or self.arguments.repair:
                            self.crawler.stats.inc_value("civicband/sites/failed")
                            logger.error(
                                "%s is not in municipalities: nothing to verify or repair;"
                                " crawl it first",
                                subdomain,
                            )
                            continue
                        yield self.page_request(None, subdomain, document_type, None)
                        continue
                    claim = await self._claim(subdomain, document_type)
                    if claim is None or not claim.runs:
                        continue
                    if self.arguments.repair:
                        self.repairs[claim.job_id] = RepairState()
                        yield self.sql_request(
                            claim.job_id,
                            subdomain,
                            document_type,
                            datasette.bucket_counts_sql(document_type),
                            self.parse_buckets,
                        )
                        continue
                    if self.arguments.verify_only or claim.exhausted:
                        # Nothing to fetch: only the count (verify_only, or a pass already done).
                        yield self.count_request(claim.job_id, subdomain, document_type)
                        continue
                    self.active[claim.job_id] = claim.cursor
                    if restored.get(str(claim.job_id), False) == claim.cursor:
                        # JOBDIR holds this very request: it comes back from the disk queue.
                        queued[str(claim.job_id)] = claim.cursor
                        continue
                    yield self.page_request(claim.job_id, subdomain, document_type, claim.cursor)
        finally:
            self.ready.set()

    async def _claim(self, subdomain: str, document_type: str) -> jobs.Claim | None:
        """Lease the job for one (site, type); one job's trouble must not end the others."""
        try:
            async with self.store.connection() as conn:
                claim = await jobs.claim(
                    conn, self.store, subdomain, document_type, resume=self.resume
                )
        except Exception as error:
            self.crawler.stats.inc_value("civicband/jobs/failed")
            logger.error(
                "%s/%s: could not start a job: %s", subdomain, document_type, one_line(error)
            )
            return None
        if claim.runs:
            self.crawler.stats.inc_value("civicband/jobs/started")
            if claim.how != "new":
                self.crawler.stats.inc_value("civicband/jobs/resumed")
                logger.info(
                    "Job %s %s/%s %s from cursor %r",
                    claim.job_id,
                    subdomain,
                    document_type,
                    claim.how,
                    claim.cursor,
                )
        else:
            self.crawler.stats.inc_value("civicband/jobs/skipped")
            logger.info(
                "Job %s %s/%s is running in another process: skipped",
                claim.job_id,
                subdomain,
                document_type,
            )
        return claim

    def queued(self) -> dict[str, str | None]:
        """Jobs with a page request outstanding, kept in spider.state so JOBDIR remembers them."""
        state = getattr(self, "state", None)
        if state is None:
            self.state = state = {}
        return state.setdefault("civicband_queued", {})

    def job_ended(self, job_id: int) -> None:
        """A job completed, failed or stopped: nothing more is fetched for it."""
        self.active.pop(job_id, None)
        self.inflight.discard(job_id)
        self.queued().pop(str(job_id), None)

    def page_request(
        self, job_id: int | None, subdomain: str, document_type: str, cursor: str | None
    ) -> Request:
        """One API page; job_id None means the site is new and the job starts on its answer."""
        root = datasette.site_root(self.site_url, subdomain)
        if job_id is not None:
            self.active[job_id] = cursor
            self.queued()[str(job_id)] = cursor
        return self._source_request(
            datasette.table_url(root, document_type, self.batch_size, cursor),
            self.parse_page,
            self.page_failed,
            REDIRECTS,
            job_id=job_id,
            subdomain=subdomain,
            document_type=document_type,
            cursor=cursor,
        )

    def _source_request(
        self, url: str, callback: Any, errback: Any, statuses: list[int], **meta: Any
    ) -> Request:
        """Every request to a site: honest headers, the shared slot, redirects seen not followed."""
        return Request(
            url,
            callback=callback,
            errback=errback,
            headers=self.headers,
            dont_filter=True,
            meta={
                **meta,
                "download_slot": self.download_slot,
                "dont_redirect": True,
                "handle_httpstatus_list": statuses,
            },
        )

    async def parse_page(self, response: Response) -> AsyncIterator[Any]:
        """Turn one answer into a PageItem and the request for the page after it."""
        meta = response.meta
        job_id, subdomain, document_type = meta["job_id"], meta["subdomain"], meta["document_type"]
        self.inflight.discard(job_id)
        if job_id is not None and job_id in self.store.stopped_jobs:
            return
        if response.status in REDIRECTS:
            error = f"unknown site: {response.url} redirects to {self._location(response)}"
            for item in self._failure(meta, error):
                yield item
            return
        try:
            page = datasette.parse_table_page(response.body)
        except datasette.SourceError as error:
            retry = get_retry_request(response.request, spider=self, reason="civicband_bad_answer")
            if error.retryable and retry is not None:
                yield retry
                return
            for item in self._failure(meta, f"{error} at {response.url}", retries_exhausted=True):
                yield item
            return
        if job_id is None:
            try:
                async with self.store.connection() as conn:
                    job_id, added = await jobs.create_job(
                        conn, subdomain, document_type, new_site=True
                    )
            except psycopg.errors.UniqueViolation:
                self.crawler.stats.inc_value("civicband/jobs/skipped")
                logger.info(
                    "%s/%s is running in another process: skipped", subdomain, document_type
                )
                return
            await self.store.try_lease(job_id)
            self.crawler.stats.inc_value("civicband/jobs/started")
            if added:
                self.crawler.stats.inc_value("civicband/sites/added")
                logger.info("%s answers with JSON: added to municipalities", subdomain)
        self.dialects.setdefault(subdomain, datasette.dialect_of_body(response.body))
        if page.next is not None:
            yield self.page_request(job_id, subdomain, document_type, page.next)
        yield PageItem(
            job_id=job_id,
            subdomain=subdomain,
            document_type=document_type,
            cursor_in=meta["cursor"],
            cursor_out=page.next,
            rows=page.rows,
            url=response.url,
        )

        if page.next is None:
            yield self.count_request(job_id, subdomain, document_type)

    def count_request(self, job_id: int, subdomain: str, document_type: str) -> Request:
        """The source's own count for verification, through the engine like any page."""
        dialect = self.dialects.get(subdomain, "1.0")
        root = datasette.site_root(self.site_url, subdomain)
        return self._source_request(
            datasette.count_url(root, document_type, dialect),
            self.parse_count,
            self.count_failed,
            [*REDIRECTS, 400, 500, 502, 503, 504],
            job_id=job_id,
            subdomain=subdomain,
            document_type=document_type,
            dialect=dialect,
        )

    async def parse_count(self, response: Response) -> AsyncIterator[Any]:
        """Expected = the source's count; a count Datasette gave up on is unknown."""
        meta = response.meta
        if response.status >= 300:
            body = response.body[:2000].lower()
            if meta["dialect"] == "1.0" and response.status == 400 and b"no such table" in body:
                # Datasette 0.65 has no /-/query: ask again in its dialect.
                self.dialects[meta["subdomain"]] = "0.65"
                yield self.count_request(meta["job_id"], meta["subdomain"], meta["document_type"])
                return
            yield self._count(meta, None, f"HTTP {response.status} at {response.url}")
            return
        try:
            expected = datasette.parse_count(response.body)
        except datasette.SourceError as error:
            yield self._count(meta, None, f"{error} at {response.url}")
            return
        note = "" if expected is not None else "the count timed out"
        yield self._count(meta, expected, note)

    def count_failed(self, failure: Failure) -> Any:
        """The count could not be taken (network, timeouts): verification is unknown."""
        request = failure.request  # type: ignore[attr-defined]
        error = f"{failure.type.__name__}: {one_line(failure.value)} at {request.url}"
        return [self._count(request.meta, None, error)]

    @staticmethod
    def _count(meta: dict[str, Any], expected: int | None, note: str) -> CountItem:
        return CountItem(
            job_id=meta["job_id"],
            subdomain=meta["subdomain"],
            document_type=meta["document_type"],
            expected=expected,
            note=note,
        )

    def sql_request(
        self,
        job_id: int,
        subdomain: str,
        document_type: str,
        sql: str,
        callback: Any,
        **params: Any,
    ) -> Request:
        """A read-only SQL query for repair, in the site's Datasette dialect."""
        dialect = self.dialects.get(subdomain, "1.0")
        root = datasette.site_root(self.site_url, subdomain)
        return self._source_request(
            datasette.sql_url(root, dialect, sql, **{k: str(v) for k, v in params.items()}),
            callback,
            self.repair_failed,
            [400],
            job_id=job_id,
            subdomain=subdomain,
            document_type=document_type,
            dialect=dialect,
            sql=sql,
            params=params,
        )

    def _sql_rows(self, response: Response) -> tuple[list[dict[str, Any]] | None, Any]:
        """The rows of an SQL answer, or (None, what to yield instead)."""
        meta = response.meta
        if response.status == 400:
            body = response.body[:2000].lower()
            if meta["dialect"] == "1.0" and b"no such table" in body:
                # Datasette 0.65 has no /-/query: ask again in its dialect.
                self.dialects[meta["subdomain"]] = "0.65"
                request = self.sql_request(
                    meta["job_id"],
                    meta["subdomain"],
                    meta["document_type"],
                    meta["sql"],
                    response.request.callback,
                    **meta["params"],
                )
                return None, [request]
            return None, self._repair_stop(meta, f"HTTP 400 at {response.url}")
        try:
            rows = datasette.parse_table_page(response.body).rows
        except datasette.SourceError as error:
            return None, self._repair_stop(meta, f"{error} at {response.url}")
        if not all(isinstance(row, dict) for row in rows):
            return None, self._repair_stop(meta, f"malformed SQL answer at {response.url}")
        return rows, None

    def _repair_stop(self, meta: dict[str, Any], error: str) -> list[JobFailed]:
        """Repair never deletes on partial data: any failure ends the job, nothing guessed."""
        self.repairs.pop(meta["job_id"], None)
        return list(self._failure(meta, f"repair: {error}"))

    def repair_failed(self, failure: Failure) -> Any:
        """A repair query could not be answered: the job fails, the mirror is left as it was."""
        request = failure.request  # type: ignore[attr-defined]
        self.inflight.discard(request.meta["job_id"])
        if failure.check(HttpError):
            error = f"HTTP {failure.value.response.status} at {request.url}"
        else:
            error = f"{failure.type.__name__}: {one_line(failure.value)} at {request.url}"
        return self._repair_stop(request.meta, error)

    @sql_answer
    async def parse_buckets(
        self, response: Response, rows: list[dict[str, Any]]
    ) -> AsyncIterator[Any]:
        """Compare per-prefix counts with the mirror; list ids only where they differ."""
        meta = response.meta
        job_id, subdomain, document_type = meta["job_id"], meta["subdomain"], meta["document_type"]
        source = {row["bucket"]: int(row["n"]) for row in rows if row.get("bucket") is not None}
        nameless = sum(int(row["n"]) for row in rows if row.get("bucket") is None)
        if nameless:
            logger.warning("%s/%s: %s source rows have no id", subdomain, document_type, nameless)
        async with self.store.connection() as conn:
            local = await jobs.local_buckets(conn, subdomain, document_type)
        state = self.repairs[job_id]
        state.open_buckets = set(differing_buckets(source, local))
        self.crawler.stats.inc_value("civicband/repair/buckets", len(state.open_buckets))
        logger.info(
            "Job %s %s/%s repair: %s of %s id buckets differ",
            job_id,
            subdomain,
            document_type,
            len(state.open_buckets),
            len(source.keys() | local.keys()),
        )
        if not state.open_buckets:
            self.repairs.pop(job_id, None)
            yield self.count_request(job_id, subdomain, document_type)
            return
        for bucket in sorted(state.open_buckets):
            yield self._list_request(meta, bucket, "")

    def _list_request(self, meta: dict[str, Any], bucket: str, after: str) -> Request:
        low, high = datasette.bucket_range(bucket)
        request = self.sql_request(
            meta["job_id"],
            meta["subdomain"],
            meta["document_type"],
            datasette.bucket_ids_sql(meta["document_type"]),
            self.parse_bucket_ids,
            low=low,
            high=high,
            after=after,
        )
        request.meta["bucket"] = bucket
        return request

    @sql_answer
    async def parse_bucket_ids(
        self, response: Response, rows: list[dict[str, Any]]
    ) -> AsyncIterator[Any]:
        """Collect a bucket's ids; once the listing is complete, fetch and delete exactly."""
        meta = response.meta
        job_id, bucket = meta["job_id"], meta["bucket"]
        state = self.repairs.get(job_id)
        if state is None:
            return
        listed = state.listed.setdefault(bucket, [])
        listed.extend(str(row["id"]) for row in rows)
        if len(rows) >= datasette.MAX_PAGE_SIZE:
            yield self._list_request(meta, bucket, listed[-1])
            return
        async with self.store.connection() as conn:
            local, rejected = await jobs.ids_in_bucket(
                conn, meta["subdomain"], meta["document_type"], *datasette.bucket_range(bucket)
            )
        missing, extra = plan_bucket(listed, local, rejected)
        if extra:
            yield RepairItem(
                job_id, meta["subdomain"], meta["document_type"], delete_ids=extra, url=response.url
            )
        batches = chunks(missing, REPAIR_FETCH_SIZE)
        state.fetching[bucket] = len(batches)
        for ids in batches:
            request = self.sql_request(
                job_id,
                meta["subdomain"],
                meta["document_type"],
                datasette.rows_by_id_sql(meta["document_type"]),
                self.parse_fetched,
                ids=json.dumps(ids, separators=(",", ":")),
            )
            request.meta["bucket"] = bucket
            yield request
        if not batches and state.bucket_done(bucket):
            self.repairs.pop(job_id, None)
            yield self.count_request(job_id, meta["subdomain"], meta["document_type"])

    @sql_answer
    async def parse_fetched(
        self, response: Response, rows: list[dict[str, Any]]
    ) -> AsyncIterator[Any]:
        """Rows fetched by id go to the pipeline; when every bucket is done, verify."""
        meta = response.meta
        job_id, bucket = meta["job_id"], meta["bucket"]
        yield RepairItem(
            job_id, meta["subdomain"], meta["document_type"], rows=rows, url=response.url
        )
        state = self.repairs.get(job_id)
        if state is None:
            return
        state.fetching[bucket] -= 1
        if state.fetching[bucket] == 0 and state.bucket_done(bucket):
            self.repairs.pop(job_id, None)
            yield self.count_request(job_id, meta["subdomain"], meta["document_type"])

    @staticmethod
    def _location(response: Response) -> str:
        return (response.headers.get("Location") or b"?").decode("latin-1")

    def _failure(
        self, meta: dict[str, Any], error: str, *, retries_exhausted: bool = False
    ) -> Iterator[JobFailed]:
        """The job for this request cannot go on; a site never seen before has no job to fail."""
        if meta["job_id"] is None:
            self.crawler.stats.inc_value("civicband/sites/failed")
            logger.error("%s/%s: %s", meta["subdomain"], meta["document_type"], error)
            return
        yield JobFailed(
            job_id=meta["job_id"],
            subdomain=meta["subdomain"],
            document_type=meta["document_type"],
            error=error,
            retries_exhausted=retries_exhausted,
        )

    async def page_failed(self, failure: Failure) -> AsyncIterator[Any]:
        """Retries are used up, or the answer was an error that retrying cannot fix."""
        request = failure.request  # type: ignore[attr-defined]
        self.inflight.discard(request.meta["job_id"])
        if failure.check(HttpError):
            response = failure.value.response
            error = f"HTTP {response.status} at {response.url}"
            exhausted = (
                response.status >= 500
                or response.status == 429
                or bool(request.meta.get(RETRIES_EXHAUSTED))
            )
        else:
            error = f"{failure.type.__name__}: {one_line(failure.value)} at {request.url}"
            exhausted = True
        if request.meta["job_id"] in self.store.stopped_jobs:
            return
        for item in self._failure(request.meta, error, retries_exhausted=exhausted):
            yield item
