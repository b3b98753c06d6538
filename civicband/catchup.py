"""Catch-up: bring a (site, type) the mirror already holds up to date at the cost of what changed.

Digests first (one request for most tables); ids and fingerprints of the differing buckets only;
then exactly the new and changed pages by id; then the vanished ones deleted, after complete
listings and within the shrink guard; then verification (civicband.verification) judges
against the digest taken at the start. With exact=true every value is compared as well
(civicband.exact), and the pages whose values differ are fetched with the rest; verification
then compares every value again, unless the catch-up changed nothing. A catch-up that would cost
more requests than a full pass becomes one, unless it was asked for with repair=true.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from scrapy.crawler import Crawler
from scrapy.statscollectors import StatsCollector

from civicband import digest, exact, jobs, mirror
from civicband.datasette import MAX_PAGE_SIZE, SourceError
from civicband.digest import OTHER, Difference
from civicband.lifecycle import ActiveJob, Exhausted, Failed, Restart
from civicband.rows import clean_page, raw_text
from civicband.source import Source
from civicband.writer import count_changes

if TYPE_CHECKING:
    from civicband.registry import Registry

logger = logging.getLogger(__name__)

# Ids one by-id request carries, about: 12 hex digits in a JSON list, within URLLENGTH_LIMIT.
IDS_PER_REQUEST = 100


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


def changed_since(
    source_digest: digest.Digest,
    buckets: Iterable[str],
    source_ids: Mapping[str, int],
    other_rows: list[dict[str, Any]] | None,
) -> None:
    """Refuse to act on listings that disagree with the digest: the site changed in between.

    Deleting what a listing lacks is safe only if the listing shows the site the digest showed
    (a site caught mid-rebuild after its digest would lose present pages): each listed bucket's
    count and id sums must be the digest's, not only its count.
    """
    listed = {bucket: digest.Bucket() for bucket in buckets}
    for row_id in source_ids:
        hi, lo = digest.id_halves(row_id)
        listed[row_id[:2]] = listed.get(row_id[:2], digest.Bucket()) + digest.Bucket(1, hi, lo)
    if other_rows is not None:
        listed[OTHER] = digest.Bucket(len(other_rows))
    for bucket in sorted(listed):
        want = source_digest.get(bucket, digest.Bucket())
        got = listed[bucket]
        if (got.n, got.hi, got.lo) != (want.n, want.hi, want.lo):
            raise SourceError(
                f"the source changed during the catch-up (bucket {bucket!r}: {want.n} rows in"
                f" its digest, {got.n} listed, or other ids); nothing was deleted: run again",
                retryable=False,
            )


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
        self.guard = settings.getfloat("CIVICBAND_SHRINK_GUARD")
        self.warn_ratio = settings.getfloat("CIVICBAND_REMOVAL_WARN_RATIO")
        self.page_cap = MAX_PAGE_SIZE
        if not settings.get("CIVICBAND_SERVICE_SECRET"):  # public pages are capped
            self.page_cap = settings.getint("CIVICBAND_PUBLIC_PAGE_SIZE") or MAX_PAGE_SIZE

    async def run(self, job: ActiveJob) -> Exhausted | Restart | Failed:
        """The whole catch-up of one job; a source that cannot answer fails it, deleting nothing."""
        try:
            return await self._run(job)
        except SourceError as error:
            return Failed(f"catch-up: {error}")

    async def _run(self, job: ActiveJob) -> Exhausted | Restart | Failed:
        registry, source = self.registry, self.source
        site, kind = job.subdomain, job.document_type

        async def local_state(conn: Any) -> tuple[digest.Digest, tuple[int, int]]:
            return (
                await mirror.local_digest(conn, site, kind),
                await mirror.local_counts(conn, site, kind),
            )

        local, (pages, rejected) = await registry.run_step(job, "reading the mirror", local_state)
        source_digest = await source.digest(site, kind, size_hint=pages + rejected)
        expected = digest.count(source_digest)
        differ = digest.differing(source_digest, local)
        self.stats.inc_value("civicband/catchup/buckets", len(differ))
        logger.info(
            "%s catch-up: %d of %d id buckets differ",
            job,
            len(differ),
            len(source_digest.keys() | local.keys()),
        )
        found = await exact.check(job, registry, source) if job.exact else None
        stale = found.stale if found is not None else []
        if found is not None:
            logger.info(
                "%s catch-up: comparing every value found %d pages out of date", job, len(stale)
            )
        if not differ and not stale:
            # Nothing to change: what the catch-up compared is what verification would find.
            return Exhausted(source_digest, found)
        hexes = [b for b in differ if b != OTHER]
        source_ids = await source.listing(site, kind, hexes) if hexes else {}
        local_ids, rejected_ids = await registry.run_step(
            job, "reading the mirror", lambda conn: mirror.listing(conn, site, kind, hexes)
        )
        difference = digest.compare(source_ids, local_ids, rejected_ids)
        other_rows: list[dict[str, Any]] = []
        other_checked = True
        if OTHER in differ:
            other_rows, other_checked = await source.other_rows(site, kind)
            other_pages, other_rejected = await registry.run_step(
                job, "reading the mirror", lambda conn: mirror.other_listing(conn, site, kind)
            )
            difference += other_difference(other_rows, other_pages, other_rejected)
        changed_since(source_digest, hexes, source_ids, other_rows if OTHER in differ else None)
        to_fetch = sorted({*difference.to_fetch, *stale})
        if not job.repair and self._cheaper_to_page(site, len(to_fetch), expected):
            return Restart(len(to_fetch))
        job.expect(job.rows_done + len(to_fetch) + len(other_rows))
        to_fetch = await self._restore(job, to_fetch)
        async for rows, checked in source.rows_by_id(site, kind, to_fetch):
            await self._store(job, rows, checked)
        if other_rows:
            await self._store(job, other_rows, other_checked)
        refusal = await self._delete(job, difference=difference, expected=expected)
        return Failed(refusal) if refusal else Exhausted(source_digest)

    def _cheaper_to_page(self, site: str, fetch: int, expected: int) -> bool:
        """Whether a full pass would take fewer requests than fetching these rows by id.

        Pages are as large as the site serves them: public pages are capped, and a site with a
        smaller max_returned_rows says so.
        """
        batch_size = self.crawler.spider.batch_size  # -a batch_size, else CIVICBAND_BATCH_SIZE
        size = min(batch_size, self.page_cap, self.source.page_limits.get(site, MAX_PAGE_SIZE))
        by_id = math.ceil(fetch / min(IDS_PER_REQUEST, size))
        paging = math.ceil(expected / size) + 1
        return by_id > paging

    async def _restore(self, job: ActiveJob, ids: list[str]) -> list[str]:
        """Bring back removed pages whose ids the source has again; the ids still to fetch whole.

        The id hashes the text, meeting, date and page, so a tombstone holds them as the source
        does: only page_image, entities_json and votes_json are fetched for such ids.
        """
        site, kind = job.subdomain, job.document_type
        kept = await self.registry.run_step(
            job, "reading the mirror", lambda conn: mirror.tombstoned(conn, site, kind, ids)
        )
        if not kept:
            return ids
        async for values, checked in self.source.values_by_id(site, kind, sorted(kept)):
            rows = [{**kept[row["id"]], **row} for row in values if row.get("id") in kept]
            await self._store(job, rows, checked)
        return [i for i in ids if i not in kept]

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
