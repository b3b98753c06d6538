"""What catch-up and verification read from a site over many SQL answers, each by Source.sql.

The digest (split into id ranges when a range hits the time limit or is cut short), listings of
ids and fingerprints by keyset pages, every value for exact=true, rows whose ids keyset paging
cannot reach, and rows by id in batches the URL limit allows. Each never takes an answer cut
short for a complete one, and fails rather than loop on a source that does not advance.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from civicband import datasette, digest, exact
from civicband.datasette import (
    DOCUMENT_TABLES,
    MAX_PAGE_SIZE,
    Interrupted,
    LacksColumn,
    SourceError,
)

if TYPE_CHECKING:
    from civicband.source import Source

COLUMNS = ("id", "meeting", "date", "page", "text", "page_image", "entities_json", "votes_json")
LEGACY_COLUMNS = COLUMNS[:6]
# A digest that hits the time limit is split once, into 16 id ranges; one whose answer is cut
# short (a small max_returned_rows) is split until each range holds one bucket (depth 2).
MAX_SPLIT_DEPTH = 2


class Reads:
    """A site's digest, listings, values and rows, asked through the Source that owns them."""

    def __init__(self, source: Source) -> None:
        self.source = source

    async def digest(self, subdomain: str, document_type: str, size_hint: int = 0) -> digest.Digest:
        """The source's digest of one table: one request, or one per id range on big tables.

        A range whose query hits the time limit, or whose answer is cut short, is split in
        sixteen; a truncated answer is never taken for a complete one.
        """
        table = DOCUMENT_TABLES[document_type]
        ranges = [digest.IdRange()]
        if self.source.split_rows and size_hint > self.source.split_rows:
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
                self.source.stats.inc_value("civicband/digest/splits")
                children = id_range.split()
                born_of_interrupt.update(children)
                ranges[:0] = children
                continue
            if page.truncated:
                if id_range.depth >= MAX_SPLIT_DEPTH:
                    raise SourceError(
                        "digest answer truncated even for one bucket", retryable=False
                    )
                self.source.stats.inc_value("civicband/digest/splits")
                ranges[:0] = id_range.split()
                continue
            try:
                parts.append(digest.read_digest(page.rows))
            except digest.DigestError as error:
                raise SourceError(str(error), retryable=False) from None
        self.source.stats.inc_value("civicband/digest/requests")
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
            return await self.source.sql(subdomain, sql, **kw, **params)
        except LacksColumn:
            self.source.stats.inc_value("civicband/source/legacy_answers")
        sql, params = build(LEGACY_COLUMNS)
        return await self.source.sql(subdomain, sql, **kw, **params)

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
                self.source.stats.inc_value("civicband/catchup/listed", len(page.rows))
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
            page = await self.source.sql(
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

        async def ask(wanted: list[str]) -> datasette.TablePage:
            return await self.source.sql(subdomain, sql, ids=wanted)

        async for answer in self._by_id(subdomain, ids, sql, ask):
            yield answer

    async def values_by_id(
        self, subdomain: str, document_type: str, ids: list[str]
    ) -> AsyncIterator[tuple[list[dict[str, Any]], bool]]:
        """page_image, entities_json and votes_json of these ids, never their text (a restore)."""
        table = DOCUMENT_TABLES[document_type]

        async def ask(wanted: list[str]) -> datasette.TablePage:
            return await self._with_columns(
                subdomain, lambda cols: (digest.values_by_id_sql(table, cols), {}), ids=wanted
            )

        sql = digest.values_by_id_sql(table, COLUMNS)
        async for answer in self._by_id(subdomain, ids, sql, ask):
            yield answer

    async def _by_id(
        self,
        subdomain: str,
        ids: list[str],
        sql: str,
        ask: Callable[[list[str]], Awaitable[datasette.TablePage]],
    ) -> AsyncIterator[tuple[list[dict[str, Any]], bool]]:
        """Answers for ids in URL-sized batches; a truncated answer is asked again for the rest."""
        for batch in self._chunks(subdomain, ids, lambda part: {"ids": part}, sql=sql):
            wanted = list(batch)
            while wanted:
                page = await ask(wanted)
                rows = [row for row in page.rows if isinstance(row, dict)]
                yield rows, page.unicode_checked
                if not page.truncated:
                    break
                got = {row.get("id") for row in rows}
                left = [i for i in wanted if i not in got]
                if len(left) == len(wanted):
                    raise SourceError("answer by id truncated with no rows", retryable=False)
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
        root = self.source.root(subdomain)
        dialect = self.source.dialects.get(subdomain, "1.0")

        def length(part: list[str]) -> int:
            values = {
                k: v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))
                for k, v in params(part).items()
            }
            return len(datasette.sql_url(root, dialect, sql, **values))

        batches: list[list[str]] = []
        current: list[str] = []
        for item in items:
            if current and length([*current, item]) > self.source.url_limit:
                batches.append(current)
                current = []
            current.append(item)
        if current:
            if length(current[:1]) > self.source.url_limit:
                raise SourceError("SQL request longer than URLLENGTH_LIMIT", retryable=False)
            batches.append(current)
        return batches
