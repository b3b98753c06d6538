"""What catch-up and verification read from a site over many SQL answers, each by Source.sql.

Digests of one or both tables (split into id ranges when a range hits the time limit or is cut
short), bisection answers (sub-bucket digests and id listings, packed a bucket a row), every
value for exact=true, rows whose ids keyset paging cannot reach, and rows by id (whole, or
their values only) in requests as full as the URL limit and the answer's rows allow. Each never
takes an answer cut short for a complete one, and fails rather than loop on a source that does
not advance. Questions of both tables of a site go out together: that is what makes an
unchanged site one request and a round of bisection one request for both.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from civicband import bisect, datasette, digest
from civicband.bisect import ID_SEPARATOR, Answer, Ask
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


# Id ranges of one digest asked at once.
DIGEST_CONCURRENCY = 4


class _AskAlone(Exception):
    """Both tables in one answer will not do: ask each table alone."""


@dataclass(frozen=True)
class Fetched:
    """Rows of one table from one answer: whole, or the values of ids the mirror knows."""

    document_type: str
    rows: list[dict[str, Any]]
    whole: bool
    unicode_checked: bool


class Reads:
    """A site's digests, bisections, values and rows, asked through the Source that owns them."""

    def __init__(self, source: Source) -> None:
        self.source = source

    async def digest(self, subdomain: str, document_type: str, size_hint: int = 0) -> digest.Digest:
        """The source's digest of one table (see digests)."""
        return (await self.digests(subdomain, {document_type: size_hint}))[document_type]

    async def digests(self, subdomain: str, sizes: Mapping[str, int]) -> dict[str, digest.Digest]:
        """The source's digests of these tables (sizes: the rows the mirror holds of each) in
        one answer; tables that are large together are asked one by one, and a large one in
        id ranges.

        A range whose query hits the time limit, or whose answer is cut short, is split in
        sixteen (both tables asked together: first each alone); a truncated answer is never
        taken for a complete one. A site that lacks columns in one table is asked table by
        table: each is judged by its own columns.
        """
        if (
            len(sizes) > 1
            and self.source.split_rows
            and sum(sizes.values()) > self.source.split_rows
        ):
            return await self._one_by_one(subdomain, sizes)
        document_types = list(sizes)
        size_hint = sum(sizes.values())
        tables = {kind: DOCUMENT_TABLES[kind] for kind in document_types}
        ranges = [digest.IdRange()]
        if self.source.split_rows and size_hint > self.source.split_rows:
            ranges = ranges[0].split()
        # Ranges are asked a few at once: the site's SQL runs in several threads, and a full
        # pass waits for its digest before its verdict.
        gate = asyncio.Semaphore(DIGEST_CONCURRENCY)
        asked = [
            asyncio.ensure_future(self._range_digest(subdomain, tables, r, gate, splittable=True))
            for r in ranges
        ]
        try:
            answers = await asyncio.gather(*asked)
        except _AskAlone:
            return await self._one_by_one(subdomain, sizes)
        finally:
            for task in asked:
                task.cancel()  # the others, when one failed
            await asyncio.gather(*asked, return_exceptions=True)
        parts: dict[str, list[digest.Digest]] = {kind: [] for kind in tables}
        for answer in answers:
            for kind, part in answer:
                parts[kind].append(part)
        self.source.stats.inc_value("civicband/digest/requests", len(tables))
        return {kind: digest.merge(found) for kind, found in parts.items()}

    async def _range_digest(
        self,
        subdomain: str,
        tables: Mapping[str, str],
        id_range: digest.IdRange,
        gate: asyncio.Semaphore,
        *,
        splittable: bool,
    ) -> list[tuple[str, digest.Digest]]:
        """One id range's digests, per table: split in 16 when it hits the time limit (once: a
        part that hits it again fails the digest, rather than 256 more requests to a site that
        cannot answer) or its answer is cut short."""
        splittable = splittable and id_range.depth < MAX_SPLIT_DEPTH
        try:
            async with gate:
                page = await self._with_columns(
                    subdomain,
                    lambda cols: digest.digest_sql(tables, cols, id_range),
                    alone=len(tables) == 1,
                    split_on_interrupt=splittable,
                )
        except LacksColumn:  # not alone (alone, it lacks more than an older site does)
            if len(tables) == 1:
                raise
            raise _AskAlone from None
        except Interrupted:
            if len(tables) > 1:  # each table alone first: half the work an answer
                raise _AskAlone from None
            if not splittable:
                raise
            parts_splittable = False
        else:
            if not page.truncated:
                return self._tagged(page, tables)
            if id_range.depth >= MAX_SPLIT_DEPTH:
                raise SourceError("digest answer truncated even for one bucket", retryable=False)
            parts_splittable = True
        # Too much for one answer: its 16 parts, one after the other.
        self.source.stats.inc_value("civicband/digest/splits")
        found: list[tuple[str, digest.Digest]] = []
        for part in id_range.split():
            found += await self._range_digest(
                subdomain, tables, part, gate, splittable=parts_splittable
            )
        return found

    @staticmethod
    def _tagged(
        page: datasette.TablePage, tables: Mapping[str, str]
    ) -> list[tuple[str, digest.Digest]]:
        """An untruncated digest answer, per table asked."""
        try:
            found = digest.read_tagged(page.rows)
        except digest.DigestError as error:
            raise SourceError(str(error), retryable=False) from None
        for kind in found:
            if kind not in tables:
                raise SourceError(f"digest answer names a table not asked: {kind}", retryable=False)
        return list(found.items())

    async def _one_by_one(
        self, subdomain: str, sizes: Mapping[str, int]
    ) -> dict[str, digest.Digest]:
        """Each table's digest in answers of its own."""
        found: dict[str, digest.Digest] = {}
        for kind, size in sizes.items():
            found |= await self.digests(subdomain, {kind: size})
        return found

    async def _with_columns(
        self,
        subdomain: str,
        build: Callable[[tuple[str, ...]], tuple[str, dict[str, Any]]],
        *,
        alone: bool = True,
        **kw: Any,
    ) -> datasette.TablePage:
        """Ask SQL that names the JSON columns; a site without them is asked without them.

        Never remembered: which columns a site has is a property of its latest rebuild, and a
        site that gained columns must never be judged without them (SPEC §1). SQL over both
        tables (not `alone`) raises LacksColumn instead: one table may have what the other
        lacks, so the caller asks each alone.
        """
        sql, params = build(COLUMNS)
        try:
            return await self.source.sql(subdomain, sql, **kw, **params)
        except LacksColumn:
            if not alone:
                raise
            self.source.stats.inc_value("civicband/source/legacy_answers")
        sql, params = build(LEGACY_COLUMNS)
        return await self.source.sql(subdomain, sql, **kw, **params)

    async def bisect(
        self, subdomain: str, asks: Mapping[str, Ask], rows: Mapping[str, Mapping[str, int]]
    ) -> dict[str, Answer | SourceError]:
        """Each table's buckets answered at its depth (sub-bucket digests, or ids listed), in as
        few answers as the URL limit, the answer's rows and the time limit allow.

        `rows` says how many rows the source holds in each bucket (its digest): an answer
        fingerprints no more than CIVICBAND_DIGEST_SPLIT_ROWS of them. An answer cut short or
        stopped by the time limit is asked again in halves; a lone bucket stopped by it fails
        its table (the error is that table's answer), and the other table goes on.
        """
        items = [(kind, p) for kind, ask in asks.items() for p in ask.prefixes]
        got = {kind: Answer({}, {}) for kind in asks}
        limit = self.source.split_rows or math.inf

        def weight(item: tuple[str, str]) -> int:
            return rows.get(item[0], {}).get(item[1], 0)

        pending = self._pack(subdomain, items, self._bisect_url(subdomain, asks), weight, limit)
        failed: dict[str, SourceError] = {}
        while pending:
            batch = pending.pop(0)
            try:
                answers = await self._bisect_batch(subdomain, asks, batch)
            except SourceError as error:
                kinds = {kind for kind, _ in batch}
                if len(kinds) > 1:
                    raise
                # One table's bucket that cannot be answered fails that table, not the other.
                failed[kinds.pop()] = error
                pending = [b for b in ([i for i in b if i[0] not in failed] for b in pending) if b]
                continue
            if isinstance(answers, list):  # asked again in parts
                pending[:0] = answers
                continue
            for kind, answer in answers.items():
                got[kind].digests |= answer.digests
                got[kind].listed |= answer.listed
                self.source.stats.inc_value("civicband/catchup/listed", len(answer.listed))
        return {**got, **failed}

    async def _bisect_batch(
        self, subdomain: str, asks: Mapping[str, Ask], batch: list[tuple[str, str]]
    ) -> dict[str, Answer] | list[list[tuple[str, str]]]:
        """One bisection request's answers; or its parts, when it must be asked in parts."""
        part = {
            kind: Ask(asks[kind].depth, tuple(p for k, p in batch if k == kind))
            for kind in asks
            if any(k == kind for k, _ in batch)
        }
        tables = {kind: DOCUMENT_TABLES[kind] for kind in part}
        params = {n: v for kind, ask in part.items() for n, v in ask.params(kind).items()}
        try:
            page = await self._with_columns(
                subdomain,
                lambda cols: (bisect.bisect_sql(tables, cols), {}),
                alone=len(tables) == 1,
                split_on_interrupt=len(batch) > 1,
                h=digest.HEX,
                **params,
            )
        except LacksColumn:  # not alone (alone, it lacks more than an older site does)
            if len(part) == 1:
                raise
            return [[i for i in batch if i[0] == kind] for kind in part]
        except Interrupted:
            if len(batch) == 1:  # retried by the middleware, and still too slow
                raise
            self.source.stats.inc_value("civicband/bisect/splits")
            return [batch[: len(batch) // 2], batch[len(batch) // 2 :]]
        if page.truncated:
            if len(batch) == 1:
                raise SourceError("bisection answer truncated for one bucket", retryable=False)
            self.source.stats.inc_value("civicband/bisect/splits")
            return [batch[: len(batch) // 2], batch[len(batch) // 2 :]]
        self.source.stats.inc_value("civicband/bisect/requests")
        try:
            return bisect.read_packed(page.rows, part)
        except digest.DigestError as error:
            raise SourceError(str(error), retryable=False) from None

    def _bisect_url(self, subdomain: str, asks: Mapping[str, Ask]) -> Callable[[list], int]:
        """The URL length of a bisection request carrying these items."""
        tables = {kind: DOCUMENT_TABLES[kind] for kind in asks}
        return self._url_length(
            subdomain,
            bisect.bisect_sql(tables, COLUMNS),
            {"h": digest.HEX, **{f"{k}_d": str(a.depth) for k, a in asks.items()}},
            names=lambda item: item[0],
        )

    async def listing(
        self, subdomain: str, document_type: str, buckets: list[str], rows: Mapping[str, int]
    ) -> dict[str, int]:
        """Every id and fingerprint in these buckets (rows: the source's count in each)."""
        if not buckets:
            return {}
        ask = Ask(bisect.LIST_DEPTH, tuple(buckets))
        answer = (await self.bisect(subdomain, {document_type: ask}, {document_type: rows}))[
            document_type
        ]
        if isinstance(answer, SourceError):
            raise answer
        return answer.listed

    async def values(
        self,
        subdomain: str,
        document_type: str,
        prefixes: Iterable[str] = ("",),
        *,
        located: bool = False,
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """The untrusted columns of every 12-hex-id row in these buckets (all of them, for
        exact=true), in id order, answer by answer; `located`: with meeting, date and page.

        An answer cut short (`truncated`, a site whose max_returned_rows is below the limit
        asked) or full is continued after its last id; only a short untruncated one ends it.
        """
        table = DOCUMENT_TABLES[document_type]
        sql = bisect.range_values_sql(table, COLUMNS, MAX_PAGE_SIZE, located=located)
        url = self._url_length(subdomain, sql, {"after": "f" * 12}, names=lambda item: item[0])
        items = [("r", prefix) for prefix in prefixes]
        for batch in self._pack(subdomain, items, url, lambda _: 0, math.inf):
            joined = ID_SEPARATOR.join(prefix for _, prefix in batch)
            async for rows in self._range(subdomain, table, joined, located):
                yield rows

    async def _range(
        self, subdomain: str, table: str, prefixes: str, located: bool
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """One URL's worth of buckets, answer by answer, keyset on id."""
        after = ""
        while True:
            page = await self._with_columns(
                subdomain,
                lambda cols, after=after: (
                    bisect.range_values_sql(table, cols, MAX_PAGE_SIZE, located=located),
                    {"after": after, "r": prefixes},
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

    async def fetch(
        self, subdomain: str, wanted: Mapping[tuple[str, bool], list[str]]
    ) -> AsyncIterator[Fetched]:
        """Rows by id, per (document type, whole): whole rows, or the values of ids whose other
        columns the mirror holds; both tables' in the same answers, as many ids as the URL
        and the answer's rows allow. An answer cut short is asked again for the ids it
        lacked; ids the source no longer has are simply not returned."""
        items = [(key, i) for key, ids in wanted.items() for i in ids]
        pending = self._pack(
            subdomain, items, self._fetch_url(subdomain, list(wanted)), lambda _: 0, math.inf
        )
        while pending:
            batch = pending.pop(0)
            keys = sorted({key for key, _ in batch})
            parts = [(kind, DOCUMENT_TABLES[kind], whole) for kind, whole in keys]
            params = {
                f"{kind}_{'w' if whole else 'v'}": ID_SEPARATOR.join(
                    i for k, i in batch if k == (kind, whole)
                )
                for kind, whole in keys
            }
            try:
                page = await self._with_columns(
                    subdomain,
                    lambda cols, parts=parts: (bisect.fetch_sql(parts, cols), {}),
                    alone=len({kind for kind, _ in keys}) == 1,
                    **params,
                )
            except LacksColumn:  # not alone (alone, it lacks more than an older site does)
                kinds = sorted({kind for kind, _ in keys})
                if len(kinds) == 1:
                    raise
                pending[:0] = [[i for i in batch if i[0][0] == kind] for kind in kinds]
                continue
            got: set[tuple[tuple[str, bool], str]] = set()
            for key in keys:
                kind, whole = key
                label = kind if whole else f"{kind}.v"
                rows = [
                    {k: v for k, v in row.items() if k != "tag"}
                    for row in page.rows
                    if isinstance(row, dict) and row.get("tag") == label
                ]
                if not whole:
                    rows = [{k: v for k, v in row.items() if k != "text"} for row in rows]
                got.update((key, row.get("id")) for row in rows)
                yield Fetched(kind, rows, whole, page.unicode_checked)
            if page.truncated:
                left = [item for item in batch if item not in got]
                if len(left) == len(batch):
                    raise SourceError("answer by id truncated with no rows", retryable=False)
                pending.insert(0, left)

    def capacity(self, subdomain: str) -> tuple[int, int]:
        """(ids, buckets of 3 hex digits) one request to this site carries within the URL
        limit, both tables asked: what the cost model counts requests by."""
        kinds = list(DOCUMENT_TABLES)
        ids = self._fetch_url(
            subdomain, [(kind, whole) for kind in kinds for whole in (True, False)]
        )
        asks = {kind: Ask(bisect.LIST_DEPTH, ()) for kind in kinds}
        buckets = self._bisect_url(subdomain, asks)
        name = max(len(k) for k in DOCUMENT_TABLES) + len("&_w=")  # the parameter's own name
        return (
            max(1, (self.source.url_limit - ids([]) - name) // (bisect.LIST_DEPTH + 1)),
            max(1, (self.source.url_limit - buckets([]) - name) // 4),
        )

    def _fetch_url(self, subdomain: str, keys: list[tuple[str, bool]]) -> Callable[[list], int]:
        """The URL length of a by-id request carrying these items."""
        parts = [(kind, DOCUMENT_TABLES[kind], whole) for kind, whole in keys]
        return self._url_length(
            subdomain,
            bisect.fetch_sql(parts, COLUMNS),
            {},
            names=lambda item: f"{item[0][0]}_{'w' if item[0][1] else 'v'}",
        )

    def _url_length(
        self, subdomain: str, sql: str, fixed: dict[str, str], names: Callable[[Any], str]
    ) -> Callable[[list], int]:
        """How long a request's URL is with these items in its joined parameters: each item's
        text and one separator, both kept verbatim in a URL (hex digits and ".")."""
        root = self.source.root(subdomain)
        dialect = self.source.dialects.get(subdomain, "1.0")
        base = len(datasette.sql_url(root, dialect, sql, **fixed))

        def length(batch: list) -> int:
            params: dict[str, int] = {}
            for item in batch:
                name = names(item)
                params[name] = params.get(name, -1) + len(item[-1]) + 1
            return base + sum(len(name) + 2 + n for name, n in params.items())

        return length

    def _pack(
        self,
        subdomain: str,
        items: list,
        url_length: Callable[[list], int],
        weight: Callable[[Any], int],
        limit: float,
    ) -> list[list]:
        """Items in batches within URLLENGTH_LIMIT, the answer's rows and a weight limit."""
        rows_cap = self.source.page_limits.get(subdomain, MAX_PAGE_SIZE)
        batches: list[list] = []
        current: list = []
        load = 0
        for item in items:
            grown = [*current, item]
            if current and (
                url_length(grown) > self.source.url_limit
                or len(grown) > rows_cap
                or load + weight(item) > limit
            ):
                batches.append(current)
                current, load = [], 0
                grown = [item]
            if url_length(grown) > self.source.url_limit:
                raise SourceError("SQL request longer than URLLENGTH_LIMIT", retryable=False)
            current = grown
            load += weight(item)
        if current:
            batches.append(current)
        return batches
