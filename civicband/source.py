"""Asking a civic.band site: requests built alike, and SQL answered through Scrapy's engine.

Every request carries the project's headers and the one download slot all sites share, and
sees redirects instead of following them. SQL questions (counts, digests, id listings, rows by
id) go through `engine.download_async`, so the downloader middlewares (backoff, rate limits,
the public pace) apply to them as to pages. This module owns the rules about one SQL answer:
which Datasette line a site speaks, one that hit the time limit, a URL too long; what is read
over many answers (the digest's id ranges, listings, rows by id, answers cut short) is
reads.py's.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, Self

from scrapy import Request
from scrapy.crawler import Crawler
from scrapy.http import Response
from scrapy.settings import BaseSettings

from civicband import datasette
from civicband.datasette import (
    MAX_PAGE_SIZE,
    Interrupted,
    LacksColumn,
    SourceError,
    UnknownSite,
)
from civicband.db import one_line
from civicband.digest import Digest
from civicband.middlewares import RETRIES_EXHAUSTED, SPLIT_ON_INTERRUPT
from civicband.reads import Reads

logger = logging.getLogger(__name__)

REDIRECTS = [301, 302, 303, 307, 308]


class Stopping(Exception):
    """The crawl is stopping: a step gives up quietly and its job is paused."""


def service_headers(settings: BaseSettings, accept: str) -> dict[str, str]:
    """The headers of every request to civic.band: the secret goes only in a header, never a log."""
    headers = {"Accept": accept}
    secret = settings.get("CIVICBAND_SERVICE_SECRET") or ""
    if secret:
        headers["X-Service-Secret"] = secret
    return headers


class Source:
    """Build requests to the sites and put SQL questions to them."""

    def __init__(self, crawler: Crawler) -> None:
        settings = crawler.settings
        self.crawler = crawler
        self.stats = crawler.stats
        self.site_url = datasette.check_site_url(settings.get("CIVICBAND_SITE_URL"))
        self.headers = service_headers(settings, "application/json")
        self.slot = settings.get("CIVICBAND_DOWNLOAD_SLOT")
        self.url_limit = settings.getint("URLLENGTH_LIMIT") or 2083
        self.split_rows = settings.getint("CIVICBAND_DIGEST_SPLIT_ROWS")
        # What each site has shown of itself: its Datasette line and its largest page. Not its
        # columns: a site rebuilt since may have gained some (SQL asks for all of them first).
        self.dialects: dict[str, str] = {}
        self.page_limits: dict[str, int] = {}
        self._known: dict[str, str] = {}
        self.reads = Reads(self)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        """Every spider asks the same sites the same way."""
        return cls(crawler)

    def recall(self, dialects: list[tuple[str, str]]) -> None:
        """Which Datasette line the sites spoke in earlier runs."""
        for subdomain, dialect in dialects:
            self._known[subdomain] = dialect
            self.dialects.setdefault(subdomain, dialect)

    def learned(self) -> list[tuple[str, str]]:
        """Sites whose Datasette line was learned since last asked, to keep for the next run."""
        news = []
        for subdomain, dialect in self.dialects.items():
            if self._known.get(subdomain) != dialect:
                self._known[subdomain] = dialect
                news.append((subdomain, dialect))
        return news

    def root(self, subdomain: str) -> str:
        """A site's root URL."""
        return datasette.site_root(self.site_url, subdomain)

    def request(
        self,
        url: str,
        callback: Callable[..., Any] | None = None,
        errback: Callable[..., Any] | None = None,
        statuses: list[int] | None = None,
        **meta: Any,
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
                "download_slot": self.slot,
                "dont_redirect": True,
                "handle_httpstatus_list": [*REDIRECTS, *(statuses or [])],
            },
        )

    def page_url(self, subdomain: str, document_type: str, size: int, cursor: str | None) -> str:
        """A table page, at most as large as the site accepts."""
        size = min(size, self.page_limits.get(subdomain, MAX_PAGE_SIZE))
        return datasette.table_url(self.root(subdomain), document_type, size, cursor)

    def learn(self, subdomain: str, body: bytes) -> None:
        """A table page shows which Datasette line its site speaks."""
        self.dialects.setdefault(subdomain, datasette.dialect_of_body(body))

    # ---- SQL through the engine --------------------------------------------------------------

    async def _get(self, url: str, **meta: Any) -> Response:
        if not self.crawler.crawling:  # stopping, or not started: the engine may be gone
            raise Stopping(url)
        engine = self.crawler.engine
        try:
            return await engine.download_async(self.request(url, **meta))
        except Exception as error:
            if not self.crawler.crawling:
                raise Stopping(url) from None
            # A request refused while the crawl runs (a middleware's IgnoreRequest, robots.txt,
            # the offsite filter) is the source not answering, never a quiet stop.
            raise SourceError(
                f"{type(error).__name__}: {one_line(error)} at {url}", retryable=True
            ) from None

    async def sql(
        self, subdomain: str, sql: str, *, split_on_interrupt: bool = False, **params: Any
    ) -> datasette.TablePage:
        """One SQL answer, in the site's Datasette line; errors raise SourceError (one line)."""
        values = {
            k: v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))
            for k, v in params.items()
        }
        while True:
            dialect = self.dialects.get(subdomain, "1.0")
            url = datasette.sql_url(self.root(subdomain), dialect, sql, **values)
            if len(url) > self.url_limit:
                raise SourceError(
                    f"SQL request longer than URLLENGTH_LIMIT ({len(url)})", retryable=False
                )
            meta = {SPLIT_ON_INTERRUPT: True} if split_on_interrupt else {}
            response = await self._get(url, **meta)
            status, body = response.status, response.body
            if datasette.lacks_query_endpoint(status, body) and dialect == "1.0":
                self.dialects[subdomain] = "0.65"  # 0.65 has no /-/query: ask again in its dialect
                continue
            self.dialects.setdefault(subdomain, dialect)
            break
        if status in REDIRECTS:
            location = (response.headers.get("Location") or b"?").decode("latin-1")
            raise UnknownSite(f"unknown site: {response.url} redirects to {location}")
        if datasette.is_interrupted(status, body):
            raise Interrupted(f"the query hit the site's time limit at {response.url}")
        if datasette.lacks_column(status, body):
            raise LacksColumn(f"the table lacks a column the query names, at {response.url}")
        if status != 200:
            exhausted = " (retries used up)" if response.meta.get(RETRIES_EXHAUSTED) else ""
            raise SourceError(
                f"HTTP {status}{exhausted} at {response.url}", retryable=status >= 500
            )
        try:
            return datasette.parse_sql(body)
        except SourceError as error:
            raise SourceError(f"{error} at {response.url}", retryable=error.retryable) from None

    async def count(self, subdomain: str, document_type: str) -> int | None:
        """The source's own count, by SQL (index-only); None when it timed out."""
        return datasette.parse_count(await self.sql(subdomain, datasette.count_sql(document_type)))

    # ---- what catch-up and verification read, over many answers (reads.py) -------------------

    async def digest(self, subdomain: str, document_type: str, size_hint: int = 0) -> Digest:
        """The source's digest of one table (Reads.digest)."""
        return await self.reads.digest(subdomain, document_type, size_hint)

    async def other_rows(
        self, subdomain: str, document_type: str
    ) -> tuple[list[dict[str, Any]], bool]:
        """Whole rows whose ids keyset paging cannot reach (Reads.other_rows)."""
        return await self.reads.other_rows(subdomain, document_type)
