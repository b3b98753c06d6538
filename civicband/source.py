"""Asking a civic.band site: requests built alike, and SQL answered through Scrapy's engine.

Every request carries the project's headers and the one download slot all sites share, and
sees redirects instead of following them. SQL questions (counts, digests, id listings, rows by
id) go through `engine.download_async`, so the downloader middlewares (backoff, rate limits,
the public pace) apply to them as to pages. This module owns the rules about SQL answers:
which Datasette line a site speaks, older sites without JSON columns, an answer cut short
(`truncated`), one that hit the time limit, a URL too long.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Self

from scrapy import Request
from scrapy.crawler import Crawler
from scrapy.exceptions import IgnoreRequest
from scrapy.http import Response
from scrapy.settings import BaseSettings

from civicband import datasette, digest, exact
from civicband.datasette import DOCUMENT_TABLES, MAX_PAGE_SIZE, SourceError
from civicband.db import one_line
from civicband.middlewares import RETRIES_EXHAUSTED, SPLIT_ON_INTERRUPT

logger = logging.getLogger(__name__)

REDIRECTS = [301, 302, 303, 307, 308]
COLUMNS = ("id", "meeting", "date", "page", "text", "page_image", "entities_json", "votes_json")
LEGACY_COLUMNS = COLUMNS[:6]
# A digest that hits the time limit is split once, into 16 id ranges; one whose answer is cut
# short (a small max_returned_rows) is split until each range holds one bucket (depth 2).
MAX_SPLIT_DEPTH = 2


class Interrupted(SourceError):
    """The query hit the site's time limit."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=True)


class UnknownSite(SourceError):
    """The site redirects to civic.band's index: it does not exist."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


class LacksColumn(SourceError):
    """An older site without entities_json/votes_json refused a query naming them."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


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
        engine = self.crawler.engine
        if engine is None or not self.crawler.crawling:
            raise Stopping(url)
        try:
            return await engine.download_async(self.request(url, **meta))
        except IgnoreRequest:
            raise Stopping(url) from None
        except Exception as error:
            if not self.crawler.crawling:
                raise Stopping(url) from None
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

    async def digest(self, subdomain: str, document_type: str, size_hint: int = 0) -> digest.Digest:
        """The source's digest of one table: one request, or one per id range on big tables.

        A range whose query hits the time limit, or whose answer is cut short, is split in
        sixteen; a truncated answer is never taken for a complete one.
        """
        table = DOCUMENT_TABLES[document_type]
        ranges = [digest.IdRange()]
        if self.split_rows and size_hint > self.split_rows:
            ranges = ranges[0].split()
        # A range is split once for hitting the time limit: a part that hits it again fails the
        # digest, rather than 256 more requests to a site that cannot answer.
        born_of_interrupt: set[digest.IdRange] = set()
        parts: list[digest.Digest] = []
        while ranges:
            id_range = ranges.pop(0)
            splittable = id_range not in born_of_interrupt and id_range.depth < MAX_SPLIT_DEPTH
            try:
                page = await self._with_columns(
                    subdomain,
                    lambda cols, r=id_range: digest.digest_sql(table, cols, r),
                    split_on_interrupt=splittable,
                )
            except Interrupted:
                if not splittable:
                    raise
                self.stats.inc_value("civicband/digest/splits")
                children = id_range.split()
                born_of_interrupt.update(children)
                ranges[:0] = children
                continue
            if page.truncated:
                if id_range.depth >= MAX_SPLIT_DEPTH:
                    raise SourceError(
                        "digest answer truncated even for one bucket", retryable=False
                    )
                self.stats.inc_value("civicband/digest/splits")
                ranges[:0] = id_range.split()
                continue
            try:
                parts.append(digest.read_digest(page.rows))
            except digest.DigestError as error:
                raise SourceError(str(error), retryable=False) from None
        self.stats.inc_value("civicband/digest/requests")
        return digest.merge(parts)

    async def _with_columns(
        self,
        subdomain: str,
        build: Callable[[tuple[str, ...]], tuple[str, dict[str, Any]]],
        **kw: Any,
    ) -> datasette.TablePage:
        """Ask SQL that names the JSON columns; a site without them is asked without them.

        Never remembered: which columns a site has is a property of its latest rebuild, and a
        site that gained columns must never be judged without them (SPEC §1).
        """
        sql, params = build(COLUMNS)
        try:
            return await self.sql(subdomain, sql, **kw, **params)
        except LacksColumn:
            self.stats.inc_value("civicband/source/legacy_answers")
        sql, params = build(LEGACY_COLUMNS)
        return await self.sql(subdomain, sql, **kw, **params)

    async def listing(
        self, subdomain: str, document_type: str, buckets: list[str]
    ) -> dict[str, int]:
        """Every id and fingerprint in these hex buckets, by keyset pages until one is complete."""
        table = DOCUMENT_TABLES[document_type]
        found: dict[str, int] = {}
        for chunk in self._chunks(
            subdomain, buckets, lambda part: {"buckets": part, "after": "f" * 12}
        ):
            after = ""
            while True:
                page = await self._with_columns(
                    subdomain,
                    lambda cols, chunk=chunk, after=after: (
                        digest.listing_sql(table, cols, MAX_PAGE_SIZE),
                        {"buckets": chunk, "after": after},
                    ),
                )
                for row in page.rows:
                    found[str(row["id"])] = int(row["fp"] or 0)
                self.stats.inc_value("civicband/catchup/listed", len(page.rows))
                if not page.truncated and len(page.rows) < MAX_PAGE_SIZE:
                    break
                if not page.rows:
                    raise SourceError("listing answer truncated with no rows", retryable=False)
                last = str(page.rows[-1]["id"])
                if last <= after:  # a source that answers the same page again would loop
                    raise SourceError(f"listing does not advance past {after!r}", retryable=False)
                after = last
        return found

    async def values(
        self, subdomain: str, document_type: str
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """exact=true: every 12-hex-id row's untrusted columns, in id order, answer by answer.

        An answer cut short (`truncated`, a site whose max_returned_rows is below the limit
        asked) or full is continued after its last id; only a short untruncated one ends it.
        """
        table = DOCUMENT_TABLES[document_type]
        after = ""
        while True:
            page = await self._with_columns(
                subdomain,
                lambda cols, after=after: (
                    exact.values_sql(table, cols, MAX_PAGE_SIZE),
                    {"after": after},
                ),
            )
            rows = page.rows
            complete = not page.truncated and len(rows) < MAX_PAGE_SIZE
            if not complete:
                if not rows:
                    raise SourceError("value listing truncated with no rows", retryable=False)
                last = str(rows[-1]["id"])
                if last <= after:  # a source that answers the same page again would loop
                    raise SourceError(
                        f"value listing does not advance past {after!r}", retryable=False
                    )
                after = last
            yield rows
            if complete:
                return

    async def other_rows(
        self, subdomain: str, document_type: str
    ) -> tuple[list[dict[str, Any]], bool]:
        """Whole rows whose ids are NULL or not 12 hex digits (keyset paging cannot reach them)."""
        table = DOCUMENT_TABLES[document_type]
        rows: list[dict[str, Any]] = []
        after = 0
        checked = True
        while True:
            page = await self.sql(
                subdomain, digest.other_rows_sql(table, MAX_PAGE_SIZE), after=str(after)
            )
            checked = checked and page.unicode_checked
            before = after
            for row in page.rows:
                after = max(after, int(row.pop("civicband_rowid")))
                rows.append(row)
            if not page.truncated and len(page.rows) < MAX_PAGE_SIZE:
                return rows, checked
            if not page.rows:
                raise SourceError("answer truncated with no rows", retryable=False)
            if after <= before:  # a source that answers the same page again would loop
                raise SourceError(f"rows do not advance past rowid {before}", retryable=False)

    async def rows_by_id(
        self, subdomain: str, document_type: str, ids: list[str]
    ) -> AsyncIterator[tuple[list[dict[str, Any]], bool]]:
        """Whole rows for these ids, in batches as large as the URL limit allows.

        An answer cut short (a site with a small max_returned_rows) is asked again for the ids it
        lacked; ids the source no longer has are simply not returned.
        """
        sql = digest.rows_by_id_sql(DOCUMENT_TABLES[document_type])
        for batch in self._chunks(subdomain, ids, lambda part: {"ids": part}, sql=sql):
            wanted = list(batch)
            while wanted:
                page = await self.sql(subdomain, sql, ids=wanted)
                rows = [row for row in page.rows if isinstance(row, dict)]
                yield rows, page.unicode_checked
                if not page.truncated:
                    break
                got = {row.get("id") for row in rows}
                left = [i for i in wanted if i not in got]
                if len(left) == len(wanted):
                    raise SourceError("rows answer truncated with no rows", retryable=False)
                wanted = left

    async def values_by_id(
        self, subdomain: str, document_type: str, ids: list[str]
    ) -> AsyncIterator[tuple[list[dict[str, Any]], bool]]:
        """page_image, entities_json and votes_json of these ids, never their text (a restore)."""
        table = DOCUMENT_TABLES[document_type]
        sql = digest.values_by_id_sql(table, COLUMNS)
        for batch in self._chunks(subdomain, ids, lambda part: {"ids": part}, sql=sql):
            wanted = list(batch)
            while wanted:
                page = await self._with_columns(
                    subdomain,
                    lambda cols: (digest.values_by_id_sql(table, cols), {}),
                    ids=wanted,
                )
                rows = [row for row in page.rows if isinstance(row, dict)]
                yield rows, page.unicode_checked
                if not page.truncated:
                    break
                got = {row.get("id") for row in rows}
                left = [i for i in wanted if i not in got]
                if len(left) == len(wanted):
                    raise SourceError("values answer truncated with no rows", retryable=False)
                wanted = left

    def _chunks(
        self,
        subdomain: str,
        items: list[str],
        params: Callable[[list[str]], dict[str, Any]],
        sql: str | None = None,
    ) -> list[list[str]]:
        """Split items into batches whose request URL stays within URLLENGTH_LIMIT."""
        if sql is None:
            sql = digest.listing_sql("minutes", COLUMNS, MAX_PAGE_SIZE)  # the longest listing
        root = self.root(subdomain)
        dialect = self.dialects.get(subdomain, "1.0")

        def length(part: list[str]) -> int:
            values = {
                k: v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))
                for k, v in params(part).items()
            }
            return len(datasette.sql_url(root, dialect, sql, **values))

        batches: list[list[str]] = []
        current: list[str] = []
        for item in items:
            if current and length([*current, item]) > self.url_limit:
                batches.append(current)
                current = []
            current.append(item)
        if current:
            if length(current[:1]) > self.url_limit:
                raise SourceError("SQL request longer than URLLENGTH_LIMIT", retryable=False)
            batches.append(current)
        return batches
