"""Verification: when a job has nothing more to fetch, prove the mirror equal to the source.

The source's digest is fetched through the engine (unless a catch-up just took one) while the
mirror's side, which does not depend on it, is read beside the request; a full pass then sweeps
what it did not see (within the shrink guard, and only where there is something to sweep), the
mirror's digest is compared bucket by bucket, differing buckets are listed id by id, a job of an
exact=true run has every value compared too (civicband.exact), civicband.verify.decide judges, and
civicband/jobs.py records the verdict and which check judged it, fenced by the job's lease.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from scrapy.crawler import Crawler

from civicband import db, digest, exact, jobs, mirror
from civicband.catchup import other_difference, shrink_refusal, shrinks, warn_large_removal
from civicband.datasette import SourceError
from civicband.digest import OTHER, Difference
from civicband.lifecycle import ActiveJob, Exhausted
from civicband.source import Source
from civicband.verify import Verdict, decide, with_exact
from civicband.writer import count_changes

if TYPE_CHECKING:
    from civicband.registry import Registry

logger = logging.getLogger(__name__)
LEVELS = {"passed": logging.INFO, "unknown": logging.WARNING, "warned": logging.WARNING}


@dataclass(frozen=True)
class Held:
    """What the mirror holds of a (site, type): its digest, pages and rejected rows."""

    local: digest.Digest
    pages: int
    rejected: int


@dataclass(frozen=True)
class Unswept:
    """What a full pass saw, and the buckets where its sweep would remove something."""

    seen: digest.Digest
    buckets: frozenset[str]

    def sweeps(self, source: digest.Digest) -> bool:
        """Whether a sweep weighed against the source's digest would remove anything."""
        return not self.buckets.isdisjoint(digest.seen_whole(source, self.seen))


async def held(conn: Any, job: ActiveJob) -> Held:
    """The mirror's digest and counts of the job's (site, type)."""
    site, kind = job.subdomain, job.document_type
    local = await mirror.local_digest(conn, site, kind)
    pages, rejected = await mirror.local_counts(conn, site, kind)
    return Held(local, pages, rejected)


async def before_digest(conn: Any, job: ActiveJob) -> tuple[Held, Unswept | None]:
    """The mirror's side, which the source's digest does not change; a full pass's sweep too."""
    state = await held(conn, job)
    if job.mode != jobs.FULL:
        return state, None
    site, kind = job.subdomain, job.document_type
    seen = await mirror.seen_digest(conn, site, kind, job.job_id)
    return state, Unswept(seen, await mirror.sweepable(conn, site, kind, job.job_id))


class Verify:
    """Verify a job whose pages are exhausted: a step the Registry runs, returning its status."""

    def __init__(self, crawler: Crawler, registry: Registry, source: Source) -> None:
        settings = crawler.settings
        self.stats = crawler.stats
        self.registry = registry
        self.source = source
        self.max_rows = settings.getint("CIVICBAND_VERIFY_MAX_MISSING_ROWS")
        self.max_ratio = settings.getfloat("CIVICBAND_VERIFY_MAX_MISSING_RATIO")
        self.guard = settings.getfloat("CIVICBAND_SHRINK_GUARD")
        self.warn_ratio = settings.getfloat("CIVICBAND_REMOVAL_WARN_RATIO")
        # Source digests asked as a full pass's last page arrived, by job id, until verified.
        self.asked: dict[int, asyncio.Task[tuple[digest.Digest | None, str]]] = {}

    def ask_early(self, job: ActiveJob) -> None:
        """The source has no page after the one just fetched: ask its digest while pages are stored.

        Every bucket was listed before this request is sent, as when the last page is stored;
        the pages still being written change nothing the source's digest depends on.
        """
        if job.job_id in self.asked:
            return  # the last page answered twice (a retry that raced its first answer)
        task = asyncio.ensure_future(self._digest_for(job))
        self.asked[job.job_id] = task
        job.tasks.add(task)  # among the job's steps: cancelled with them if it ends first

        def done(finished: asyncio.Task) -> None:
            job.tasks.discard(finished)
            if not finished.cancelled():
                finished.exception()  # seen here; the verification that awaits it gets it again

        task.add_done_callback(done)

    def forget(self, job: ActiveJob) -> None:
        """The job left this process: a digest asked for it early is needed no more."""
        task = self.asked.pop(job.job_id, None)
        if task is not None:
            task.cancel()

    async def run(self, job: ActiveJob, taken: Exhausted) -> str:
        """Verify one job and record the verdict (fenced); the job's status to end with."""
        verdict = await self._verify(job, taken.digest, taken.exact)

        async def record(conn: Any) -> None:
            # The verdict ends the job: what its pass saw is needed no more (a sweep is done).
            await jobs.record_verdict(conn, job.lease, verdict)
            await mirror.forget_seen(conn, job.job_id)

        await self.registry.run_step(job, "recording the verification", record)
        self._report(job, verdict)
        await self._cross_check(job.subdomain)
        return verdict.job_status

    async def _verify(
        self,
        job: ActiveJob,
        source_digest: digest.Digest | None,
        taken: exact.Exact | None,
    ) -> Verdict:
        registry, source = self.registry, self.source
        note = ""
        state: Held | None = None
        unswept: Unswept | None = None
        if source_digest is None:
            asked = self.asked.pop(job.job_id, None)
            # The mirror's side does not depend on the source's digest: read while it is asked.
            (source_digest, note), (state, unswept) = await asyncio.gather(
                asked if asked is not None else self._digest_for(job),
                registry.run_step(job, "reading the mirror", lambda conn: before_digest(conn, job)),
            )
        if job.mode == jobs.FULL:
            if source_digest is None:
                note += "; pages the pass did not see were kept"
            elif unswept is None or unswept.sweeps(source_digest):
                refusal = await self._sweep(job, source_digest)
                if refusal is not None:
                    return refusal
                state = None  # the sweep may have changed the mirror: read it again
        if state is None:
            state = await registry.run_step(job, "reading the mirror", lambda conn: held(conn, job))
        local, actual, rejected = state.local, state.pages, state.rejected
        expected = None if source_digest is None else digest.count(source_digest)
        differ = [] if source_digest is None else digest.differing(source_digest, local)
        difference = None
        if differ:
            try:
                difference = await self._list(job, differ, source_digest)
            except SourceError as error:
                note = f"the differing ids could not be listed: {error}"
        equal = source_digest is not None and not differ
        method, exact_error = "digest", ""
        if job.exact and source_digest is not None:
            try:
                found = taken if taken is not None else await exact.check(job, registry, source)
            except SourceError as error:
                exact_error = f"the exact comparison could not be taken: {error}"
                note = "; ".join(part for part in (note, exact_error) if part)
            else:
                equal, difference, exact_note = with_exact(equal, difference, found)
                note = "; ".join(part for part in (note, exact_note) if part)
                method = "exact"
        verdict = decide(
            expected,
            actual,
            rejected,
            equal=equal,
            difference=difference,
            max_rows=self.max_rows,
            max_ratio=self.max_ratio,
            note=note,
            method=method,
        )
        if exact_error and verdict.status == "passed":
            # exact=true was asked for: equal digests alone do not pass then.
            message = f"{exact_error}; the digests agree, not verified exactly. {verdict.message}"
            return Verdict("unknown", expected, actual, rejected, None, None, None, message)
        return verdict

    async def _digest_for(self, job: ActiveJob) -> tuple[digest.Digest | None, str]:
        """The source's digest, or None and why it could not be taken.

        Its size (whether it is asked in id ranges) is the source's own count when the pass
        took one, else what the mirror holds.
        """
        site, kind = job.subdomain, job.document_type
        size = job.rows_expected
        if size is None:
            pages, rejected = await self.registry.run_step(
                job, "reading the mirror", lambda conn: mirror.local_counts(conn, site, kind)
            )
            size = pages + rejected
        try:
            return await self.source.digest(site, kind, size_hint=size), ""
        except SourceError as error:
            return None, str(error)

    async def _sweep(self, job: ActiveJob, source_digest: digest.Digest) -> Verdict | None:
        """A complete pass removes what it did not see, only where it saw a bucket whole.

        A bucket whose ids the pass saw exactly as the source's digest counts and sums them
        proves every other id there gone; a bucket it saw short (a `next` that ended early, a
        rebuild under way) proves nothing, and keeps every page. The shrink guard still holds.
        """
        site, kind = job.subdomain, job.document_type
        source_count = digest.count(source_digest)

        async def work(conn: Any) -> tuple[str, int, int, int]:
            """(refusal, local, unseen, 0) if the guard holds; ("", local, removed, unrejected)."""
            # Weighed in the transaction that deletes, and the seen ids stay until the verdict is
            # recorded: a retried commit or a resumed job sweeps again to the same effect.
            whole = digest.seen_whole(
                source_digest, await mirror.seen_digest(conn, site, kind, job.job_id)
            )
            local, unseen = await mirror.sweep_preview(conn, site, kind, job.job_id, whole)
            if not job.allow_shrink and shrinks(source_count, local, unseen, self.guard):
                held = min(source_count, local - unseen)
                refusal = shrink_refusal(
                    site, kind, removing=unseen, local=local, source=held, guard=self.guard
                )
                return refusal, local, unseen, 0
            removed, unrejected = await mirror.sweep(conn, site, kind, job.job_id, whole)
            await jobs.count(conn, job.lease, removed=removed)
            return "", local, removed, unrejected

        refusal, local, removed, unrejected = await self.registry.run_step(
            job, "sweeping vanished pages", work
        )
        if refusal:
            self.stats.inc_value("civicband/shrink/refused")
            return Verdict("failed", source_count, local, 0, None, removed, None, refusal)
        if removed or unrejected:
            self.stats.inc_value("civicband/verify/removed", removed)
            count_changes(self.stats, removed=removed)
            self.stats.inc_value("civicband/rows/unrejected", unrejected)
            logger.info(
                "%s: removed %d pages and %d rejections the source no longer has",
                job,
                removed,
                unrejected,
            )
        warn_large_removal(self.stats, job, removed=removed, local=local, ratio=self.warn_ratio)
        return None

    async def _list(
        self, job: ActiveJob, differ: list[str], source_digest: digest.Digest
    ) -> Difference:
        """List the differing buckets on both sides, to say exactly what is missing or extra."""
        registry, source = self.registry, self.source
        site, kind = job.subdomain, job.document_type
        hexes = [b for b in differ if b != OTHER]
        rows = {b: source_digest.get(b, digest.Bucket()).n for b in hexes}
        source_ids = await source.reads.listing(site, kind, hexes, rows)
        local_ids, rejected_ids = await registry.run_step(
            job, "reading the mirror", lambda conn: mirror.listing(conn, site, kind, hexes)
        )
        difference = digest.compare(source_ids, local_ids, rejected_ids)
        if OTHER in differ:
            rows, _ = await source.other_rows(site, kind)
            pages, rejected = await registry.run_step(
                job, "reading the mirror", lambda conn: mirror.other_listing(conn, site, kind)
            )
            difference += other_difference(rows, pages, rejected)
        return difference

    def _report(self, job: ActiveJob, verdict: Verdict) -> None:
        stats = self.stats
        stats.inc_value(f"civicband/verify/{verdict.status}")
        stats.inc_value(f"civicband/jobs/{verdict.job_status}")
        for name, value in (
            ("missing", verdict.missing),
            ("extra", verdict.extra),
            ("stale", verdict.stale),
            ("rejected", verdict.rejected),
        ):
            if value:
                stats.inc_value(f"civicband/verify/{name}", value)
        logger.log(
            LEVELS.get(verdict.status, logging.ERROR),
            "%s %s: verification %s: %s",
            job,
            verdict.job_status,
            verdict.status,
            verdict.message,
        )

    async def _cross_check(self, subdomain: str) -> None:
        """Report when the index's page total disagrees with the source's own counts."""
        try:
            async with db.wrap_exceptions(), self.registry.store.connection() as conn:
                cursor = await conn.execute(db.query("index_cross_check"), {"subdomain": subdomain})
                row = await cursor.fetchone()
        except db.DatabaseError as error:
            logger.warning("%s: index cross-check skipped: %s", subdomain, error)
            return
        if row is None or None in row:
            return
        listed, agendas, minutes = (int(value) for value in row)
        if listed != agendas + minutes:
            self.stats.inc_value("civicband/verify/index_mismatch")
            logger.warning(
                "%s: civic.band's index lists %s pages, its sites count %s agendas + %s minutes",
                subdomain,
                listed,
                agendas,
                minutes,
            )
