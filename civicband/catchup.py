"""Catch-up: bring a (site, type) the mirror already holds up to date at the cost of what changed.

The digests of both tables of a site first, in one request (civicband.rounds); where buckets
differ, bisection (civicband.bisect): digests of their sub-buckets, as deep as the cost model
(civicband.cost) finds cheapest, then ids and fingerprints of the sub-buckets that still
differ; then new pages whole, pages whose values changed for those values only (or their whole
range, where most of its rows changed); then the vanished ones deleted, after complete listings
that agree with the digests and within the shrink guard; then verification
(civicband.verification) judges against the digest taken at the start. With exact=true every
value is compared as well (civicband.exact), and the pages whose values differ are fetched with
the rest. A catch-up the cost model finds dearer than a full pass becomes one, unless it was
asked for with repair=true.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from scrapy.crawler import Crawler
from scrapy.statscollectors import StatsCollector

from civicband import bisect, cost, digest, exact, jobs, mirror
from civicband.bisect import Ask
from civicband.datasette import MAX_PAGE_SIZE, SourceError
from civicband.digest import OTHER, Bucket, Difference
from civicband.lifecycle import ActiveJob, Exhausted, Failed, Restart
from civicband.rounds import Rounds
from civicband.rows import clean_page, raw_text
from civicband.source import Source
from civicband.writer import count_changes

if TYPE_CHECKING:
    from civicband.registry import Registry

logger = logging.getLogger(__name__)

# What one request is worth in bytes of answer, when CIVICBAND_REQUEST_BYTES is 0: with the
# secret, a round trip is worth about what a quarter of a megabyte takes to arrive; without it,
# a request is 4 s of the public limit (15 a minute), worth several megabytes.
REQUEST_BYTES_TRUSTED = 256 * 1024
REQUEST_BYTES_PUBLIC = 4 * 1024 * 1024
# Ranges are fetched only when they hold at least this many changed rows together: below, their
# ids fit in a request as well.
DENSE_ROWS = 50


def raw_md5(row: Mapping[str, Any]) -> str:
    """The md5 PostgreSQL computes over a rejected row's raw text (rejected_rows.raw_md5)."""
    return hashlib.md5(raw_text(row).encode("utf-8")).hexdigest()  # noqa: S324 - not security


def other_difference(
    source_rows: Iterable[Mapping[str, Any]],
    pages: Mapping[str, int],
    rejected: Iterable[tuple[str | None, str]],
) -> Difference:
    """The `~` bucket (NULL and non-hex ids) compared row by row: by id, else by raw content."""
    rejected = list(rejected)
    rejected_md5s = {md5 for _, md5 in rejected}
    source_ids: dict[str, int] = {}
    source_md5s: set[str] = set()
    missing: list[str] = []
    for row in source_rows:
        row_id, md5 = row.get("id"), raw_md5(row)
        source_md5s.add(md5)
        if isinstance(row_id, str):
            source_ids[row_id] = digest.content_fp(row)
        if not (isinstance(row_id, str) and row_id in pages) and md5 not in rejected_md5s:
            missing.append(f"{row_id!r} (not 12 hex digits)")
    extra = sorted(i for i in pages if i not in source_ids)
    stale = sorted(i for i in pages if i in source_ids and source_ids[i] != pages[i])
    gone = sorted(md5 for _, md5 in rejected if md5 not in source_md5s)
    return Difference(missing, extra, stale, gone)


def agrees(source: Bucket, got: Bucket, bucket: str) -> None:
    """Refuse to act on an answer that disagrees with the digest taken before it.

    Deleting what a listing lacks is safe only if the listing shows the site the digest showed
    (a site caught mid-rebuild after its digest would lose present pages): each bucket's
    sub-bucket digests, and each listed bucket's ids, must sum to the bucket's digest, count,
    id sums and fingerprints alike.
    """
    if got != source:
        raise SourceError(
            f"the source changed during the catch-up (bucket {bucket!r}: {source.n} rows in"
            f" its digest, {got.n} in a later answer, or other ids or values); nothing was"
            " deleted: run again",
            retryable=False,
        )


def listed_digest(listed: Mapping[str, int], depth: int) -> digest.Digest:
    """A listing summed into buckets of `depth` hex digits, as the source's digest sums them."""
    found: digest.Digest = {}
    for row_id, fp in listed.items():
        hi, lo = digest.id_halves(row_id)
        bucket = row_id[:depth]
        found[bucket] = found.get(bucket, Bucket()) + Bucket(1, hi, lo, fp)
    return found


async def _nothing() -> AsyncIterator[Any]:
    """No answers: a catch-up with nothing to fetch by id does not wait for the other table."""
    return
    yield


def with_text(
    values: Iterable[Mapping[str, Any]], known: Mapping[str, Mapping[str, Any]]
) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows fetched for their values, made whole with the text the mirror holds for their ids;
    and the ids whose meeting, date or page the source no longer gives as the mirror has them
    (their text may have moved too: they are fetched whole)."""
    rows: list[dict[str, Any]] = []
    moved: list[str] = []
    for row in values:
        mine = known.get(str(row.get("id")))
        if mine is None:
            continue
        if any(row.get(c) != mine[c] for c in ("meeting", "date", "page")):
            moved.append(str(row["id"]))
            continue
        rows.append({**mine, **row})
    return rows, moved


def shrink_refusal(
    subdomain: str, document_type: str, *, removing: int, local: int, source: int, guard: float
) -> str:
    """The one-line reason nothing was deleted, and how to accept the shrink."""
    return (
        f"Refusing to remove {removing} of {local} pages of {subdomain}/{document_type}: the"
        f" source holds {source} rows, below CIVICBAND_SHRINK_GUARD ({guard:g}) of the mirror's"
        " (a site caught mid-rebuild?). Nothing was deleted; run again later, or accept the"
        " shrink with -a allow_shrink=true"
    )


def shrinks(source_count: int, pages: int, removing: int, guard: float) -> bool:
    """Whether removing these pages is past the shrink guard (SPEC §3).

    The source's own count below the guard's share of the mirror's pages, or a removal that
    would leave less than that share: the source's count includes rows the mirror rejects, so
    a rebuild that makes every row unstorable shrinks the mirror although it counts as many.
    """
    if removing <= 0:
        return False
    return source_count < guard * pages or pages - removing < guard * pages


def warn_large_removal(
    stats: StatsCollector, job: ActiveJob, *, removed: int, local: int, ratio: float
) -> None:
    """A removal within the shrink guard can still be most of a site: say so, never silently."""
    if removed == 0 or removed <= ratio * local:
        return
    stats.inc_value("civicband/removals/large")
    logger.warning(
        "%s: removed %d of %d pages (%.0f %%) that the source no longer has, more than"
        " CIVICBAND_REMOVAL_WARN_RATIO (%g): check the site if that is not expected",
        job,
        removed,
        local,
        100 * removed / local,
        ratio,
    )


class CatchUp:
    """Catch up one job: a step the Registry runs, returning what to do next."""

    def __init__(self, crawler: Crawler, registry: Registry, source: Source) -> None:
        settings = crawler.settings
        self.crawler = crawler
        self.stats = crawler.stats
        self.registry = registry
        self.source = source
        self.rounds = Rounds(source.reads)
        self.guard = settings.getfloat("CIVICBAND_SHRINK_GUARD")
        self.warn_ratio = settings.getfloat("CIVICBAND_REMOVAL_WARN_RATIO")
        self.page_cap = MAX_PAGE_SIZE
        trusted = bool(settings.get("CIVICBAND_SERVICE_SECRET"))
        if not trusted:  # public pages are capped
            self.page_cap = settings.getint("CIVICBAND_PUBLIC_PAGE_SIZE") or MAX_PAGE_SIZE
        self.request_bytes = settings.getint("CIVICBAND_REQUEST_BYTES") or (
            REQUEST_BYTES_TRUSTED if trusted else REQUEST_BYTES_PUBLIC
        )

    def limits(self, site: str) -> cost.Limits:
        """What one request to this site carries, and is worth, for the cost model."""
        batch_size = self.crawler.spider.batch_size  # -a batch_size, else CIVICBAND_BATCH_SIZE
        max_rows = self.source.page_limits.get(site, MAX_PAGE_SIZE)
        ids, buckets = self.source.reads.capacity(site)
        return cost.Limits(
            request_bytes=self.request_bytes,
            max_rows=max_rows,
            page_size=min(batch_size, self.page_cap, max_rows),
            split_rows=self.source.split_rows or cost.Limits.split_rows,
            ids_per_request=ids,
            prefixes_per_request=buckets,
        )

    async def run(self, job: ActiveJob) -> Exhausted | Restart | Failed:
        """The whole catch-up of one job; a source that cannot answer fails it, deleting nothing."""
        with self.rounds.member(job.subdomain, job.document_type):
            try:
                return await self._run(job)
            except SourceError as error:
                return Failed(f"catch-up: {error}")

    async def _run(self, job: ActiveJob) -> Exhausted | Restart | Failed:
        registry = self.registry
        site, kind = job.subdomain, job.document_type

        async def local_state(conn: Any) -> tuple[digest.Digest, tuple[int, int]]:
            return (
                await mirror.local_digest(conn, site, kind),
                await mirror.local_counts(conn, site, kind),
            )

        local, (pages, rejected) = await registry.run_step(job, "reading the mirror", local_state)
        source_digest = await self.rounds.digest(site, kind, pages + rejected)
        job.requested()
        expected = digest.count(source_digest)
        differ = digest.differing(source_digest, local)
        self.stats.inc_value("civicband/catchup/buckets", len(differ))
        logger.info(
            "%s catch-up: %d of %d id buckets differ",
            job,
            len(differ),
            len(source_digest.keys() | local.keys()),
        )
        found = await exact.check(job, registry, self.source) if job.exact else None
        stale = found.stale if found is not None else []
        if found is not None:
            logger.info(
                "%s catch-up: comparing every value found %d pages out of date", job, len(stale)
            )
        if not differ and not stale:
            # Nothing to change: what the catch-up compared is what verification would find.
            return Exhausted(source_digest, found)
        hexes = [b for b in differ if b != OTHER]
        limits = self.limits(site)
        frontier = self._frontier(hexes, source_digest, local, depth=2, buckets=256)
        plan = cost.plan(frontier, limits, expected)
        guess = cost.fetch_cost(0, frontier.changes, limits)  # ids and values: the least
        plan.add(guess.requests, guess.bytes)
        if not job.repair and plan.units(limits) > cost.full_pass(expected, limits).units(limits):
            return Restart(round(frontier.changes))
        job.plan_requests(plan.requests)
        difference, listed_rows = await self._narrow(job, source_digest, local, hexes, limits)
        other_rows: list[dict[str, Any]] = []
        other_checked = True
        if OTHER in differ:
            other_rows, other_checked = await self.source.other_rows(site, kind)
            other_pages, other_rejected = await registry.run_step(
                job, "reading the mirror", lambda conn: mirror.other_listing(conn, site, kind)
            )
            difference += other_difference(other_rows, other_pages, other_rejected)
            fps = sum(digest.content_fp(row) for row in other_rows)
            agrees(source_digest.get(OTHER, Bucket()), Bucket(len(other_rows), 0, 0, fps), OTHER)
        to_fetch = sorted({*difference.to_fetch, *stale})
        known = await registry.run_step(
            job, "reading the mirror", lambda conn: mirror.known_rows(conn, site, kind, to_fetch)
        )
        whole = [i for i in to_fetch if i not in known]
        fetch = cost.fetch_cost(len(whole), len(known), limits)
        if not job.repair and fetch.units(limits) > cost.full_pass(expected, limits).units(limits):
            return Restart(len(to_fetch))
        job.plan_requests(fetch.requests)
        job.expect(job.rows_done + len(to_fetch) + len(other_rows))
        await self._fetch(job, whole, known, listed_rows)
        if other_rows:
            await self._store(job, other_rows, other_checked)
        refusal = await self._delete(job, difference=difference, expected=expected)
        return Failed(refusal) if refusal else Exhausted(source_digest)

    @staticmethod
    def _frontier(
        prefixes: list[str],
        source: digest.Digest,
        local: digest.Digest,
        *,
        depth: int,
        buckets: float,
    ) -> cost.Frontier:
        """The cost model's view of differing buckets: their rows, and the changes behind them."""
        empty = Bucket()
        rows = sum(max(source.get(p, empty).n, local.get(p, empty).n) for p in prefixes)
        moved = sum(abs(source.get(p, empty).n - local.get(p, empty).n) for p in prefixes)
        changes = cost.changes_behind(len(prefixes), min(buckets, max(rows, 1)), moved)
        return cost.Frontier(depth, len(prefixes), rows, changes)

    async def _narrow(
        self,
        job: ActiveJob,
        source_digest: digest.Digest,
        local: digest.Digest,
        prefixes: list[str],
        limits: cost.Limits,
    ) -> tuple[Difference, dict[str, int]]:
        """Bisect the differing buckets down to their changed ids, as deep as is cheapest.

        Each round asks the source for the digests of the frontier's sub-buckets (both tables
        in one answer) and keeps those that differ from the mirror's, until listing their ids
        costs less than another round; every answer must sum to the digest it refines.
        Returns the difference, and the source's rows in each listed bucket.
        """
        registry, rounds = self.registry, self.rounds
        site, kind = job.subdomain, job.document_type
        if not prefixes:  # only the `~` bucket differs
            return Difference([], [], [], []), {}
        table_rows = digest.count(source_digest)
        empty = Bucket()
        source = {p: source_digest.get(p, empty) for p in prefixes}
        here = {p: local.get(p, empty) for p in prefixes}
        depth, asked = 2, 256.0
        while prefixes:
            frontier = self._frontier(prefixes, source, here, depth=depth, buckets=asked)
            deeper = cost.next_depth(frontier, limits, table_rows)
            rows = {p: source[p].n for p in prefixes}
            if deeper >= bisect.LIST_DEPTH:
                break
            answer = await rounds.bisect(site, kind, Ask(deeper, tuple(prefixes)), rows)
            job.requested(frontier.requests_to_ask(limits))
            self.stats.inc_value("civicband/catchup/bisections")
            totals: digest.Digest = {}
            for child, value in answer.digests.items():
                totals[child[:depth]] = totals.get(child[:depth], empty) + value
            for parent in prefixes:
                agrees(source[parent], totals.get(parent, empty), parent)
            mine = await registry.run_step(
                job,
                "reading the mirror",
                lambda conn, deeper=deeper, within=prefixes: mirror.local_digest(
                    conn, site, kind, depth=deeper, within=within
                ),
            )
            asked = len(prefixes) * cost.FANOUT ** (deeper - depth)
            prefixes = digest.differing(answer.digests, mine)
            source = {p: answer.digests.get(p, empty) for p in prefixes}
            here = {p: mine.get(p, empty) for p in prefixes}
            depth = deeper
        rows = {p: source[p].n for p in prefixes}
        answer = await rounds.bisect(site, kind, Ask(bisect.LIST_DEPTH, tuple(prefixes)), rows)
        job.requested(frontier.requests_to_ask(limits))
        listed = answer.listed
        sums = listed_digest(listed, depth)
        for prefix in prefixes:
            agrees(source[prefix], sums.get(prefix, empty), prefix)
        local_ids, rejected_ids = await registry.run_step(
            job, "reading the mirror", lambda conn: mirror.listing(conn, site, kind, prefixes)
        )
        self.stats.inc_value("civicband/catchup/listed_buckets", len(prefixes))
        return digest.compare(listed, local_ids, rejected_ids), rows

    async def _fetch(
        self,
        job: ActiveJob,
        whole: list[str],
        known: dict[str, dict[str, Any]],
        listed_rows: Mapping[str, int],
    ) -> None:
        """New pages whole; pages the mirror knows (stored, or kept as tombstones) for their
        values only, by id, or by range where most of a listed bucket's rows changed."""
        site, kind = job.subdomain, job.document_type
        by_bucket: dict[str, int] = {}
        depth = len(next(iter(listed_rows), "")) or 2
        for row_id in known:
            by_bucket[row_id[:depth]] = by_bucket.get(row_id[:depth], 0) + 1
        dense = sorted(  # of the listed buckets only (exact=true finds stale ids elsewhere too)
            b
            for b, n in by_bucket.items()
            if b in listed_rows and n >= cost.DENSE_SHARE * listed_rows[b]
        )
        if sum(by_bucket[b] for b in dense) < DENSE_ROWS:
            dense = []
        by_range = {i for i in known if i[:depth] in dense}
        values = sorted(i for i in known if i not in by_range)
        stale_text: list[str] = []
        fetching = self.rounds.fetch(site, kind, whole, values) if whole or values else None
        async for fetched in fetching or _nothing():
            job.requested()
            rows = fetched.rows
            if not fetched.whole:
                rows, moved = with_text(rows, known)
                stale_text += moved
            await self._store(job, rows, fetched.unicode_checked)
        if dense:
            self.stats.inc_value("civicband/catchup/ranges", len(dense))
            async for answer in self.source.reads.values(site, kind, dense, located=True):
                job.requested()
                rows, moved = with_text([r for r in answer if r.get("id") in by_range], known)
                stale_text += moved
                await self._store(job, rows, False)
        if stale_text:  # a document that moved under the same id: its text is fetched too
            self.stats.inc_value("civicband/catchup/refetched_whole", len(stale_text))
            async for fetched in self.rounds.fetch(site, kind, sorted(stale_text), []):
                job.requested()
                await self._store(job, fetched.rows, fetched.unicode_checked)

    async def _store(self, job: ActiveJob, rows: list[dict[str, Any]], checked: bool) -> None:
        page = clean_page(rows, unicode_checked=checked)
        async with job.write_lock:
            stored = await self.registry.writer.rows(job, rows, page)
        self.stats.inc_value("civicband/catchup/fetched", len(rows))
        if stored is not None:
            self.stats.inc_value("civicband/catchup/created", stored.created)
            self.stats.inc_value("civicband/catchup/updated", stored.updated)

    async def _delete(
        self,
        job: ActiveJob,
        *,
        difference: Difference,
        expected: int,
    ) -> str:
        """Delete what complete listings lack; the refusal when the source shrank past the guard."""
        md5s = [x for x in difference.stale_rejections if not digest.HEX_ID.match(x)]
        rejected_ids = [x for x in difference.stale_rejections if digest.HEX_ID.match(x)]
        if not (difference.extra or difference.stale_rejections):
            return ""

        async def work(conn: Any) -> tuple[str, int, int, int]:
            """(refusal, pages, 0, 0) when the guard holds; ("", pages, removed, unrejected)."""
            # Weighed in the transaction that deletes, against the pages stored by now.
            pages, _ = await mirror.local_counts(conn, job.subdomain, job.document_type)
            removing = len(difference.extra)
            if not job.allow_shrink and shrinks(expected, pages, removing, self.guard):
                refusal = shrink_refusal(
                    job.subdomain,
                    job.document_type,
                    removing=removing,
                    local=pages,
                    source=min(expected, pages - removing),
                    guard=self.guard,
                )
                return refusal, pages, 0, 0
            removed = await mirror.delete(
                conn,
                job.subdomain,
                job.document_type,
                page_ids=difference.extra,
                rejected_ids=rejected_ids,
                rejected_md5s=md5s,
            )
            await jobs.count(conn, job.lease, removed=removed[0])
            return "", pages, *removed

        refusal, pages, removed, unrejected = await self.registry.run_step(
            job, "deleting vanished pages", work
        )
        if refusal:
            self.stats.inc_value("civicband/shrink/refused")
            return refusal
        self.stats.inc_value("civicband/catchup/deleted", removed)
        count_changes(self.stats, removed=removed)
        self.stats.inc_value("civicband/rows/unrejected", unrejected)
        warn_large_removal(self.stats, job, removed=removed, local=pages, ratio=self.warn_ratio)
        logger.info(
            "%s catch-up: removed %d pages and %d rejections the source no longer has",
            job,
            removed,
            unrejected,
        )
        return ""
