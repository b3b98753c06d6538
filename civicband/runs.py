"""The run this process works in: open or join it, queue its work, add sites, claim jobs.

A run (crawl_runs) is the (site, type) work one set of arguments asked for, shared by every
process started with the same arguments while one of them lives. Claims take leases on the
Store's lease connection; what is claimed becomes the Registry's to run.
"""

from __future__ import annotations

import logging
from typing import Any

from scrapy.statscollectors import StatsCollector

from civicband import jobs
from civicband.args import SpiderArguments
from civicband.source import Source
from civicband.store import Store

logger = logging.getLogger(__name__)


class EmptyMunicipalities(ValueError):
    """subdomain=all while the municipalities table is empty: the user must fill it first."""


class RunQueue:
    """This process's side of a run: its id, its queue, and claiming from it."""

    def __init__(
        self, store: Store, source: Source, stats: StatsCollector, arguments: SpiderArguments
    ) -> None:
        self.store = store
        self.source = source
        self.stats = stats
        self.arguments = arguments
        self.resume = arguments.resume
        self.run_id = 0
        self.more = True  # the queue may hold work this process could claim
        self._told_busy: set[int] = set()

    async def open(self, *, resume: bool) -> list[str]:
        """Open or join the run and queue its known sites' work; returns sites never seen."""
        self.resume = resume
        arguments = self.arguments
        async with self.store.connection() as conn:
            if arguments.subdomains == ["all"]:
                sites = await jobs.all_subdomains(conn)
                if not sites:
                    raise EmptyMunicipalities(
                        "subdomain=all: the municipalities table is empty;"
                        " run `scrapy crawl civicband-sites` first, or name sites"
                    )
                known = set(sites)
            else:
                sites = arguments.subdomains
                known = await jobs.known_subdomains(conn, sites)
        unknown = [site for site in sites if site not in known]
        if unknown and arguments.mode in ("verify_only", "repair"):
            for site in unknown:
                self.stats.inc_value("civicband/sites/failed")
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

    async def add_site(self, subdomain: str) -> bool:
        """A named site answered with JSON: it joins municipalities and the run's queue."""

        async def work(conn: Any) -> tuple[bool, jobs.Queued]:
            await jobs.lock_queue(conn)
            added = await jobs.add_municipality(conn, subdomain)
            return added, await self._enqueue(conn, self.run_id, [subdomain])

        added, queued = await self.store.transact(work, f"adding {subdomain}")
        if added:
            self.stats.inc_value("civicband/sites/added")
            logger.info("%s answers with JSON: added to municipalities", subdomain)
        self._log_queued(True, queued)
        self.more = True
        return added

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
            self.stats.inc_value("civicband/jobs/taken_over", queued.taken_over)
        for site, kind, job_id in queued.skipped:
            self.stats.inc_value("civicband/jobs/skipped")
            logger.info(
                "Job %s %s/%s is queued or running in another process: skipped", job_id, site, kind
            )

    async def claim(self, limit: int, held: dict[int, Any]) -> list[jobs.Claim]:
        """Claim at most `limit` jobs, each under a lease; raises DatabaseError when it cannot."""
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
                self._tell_busy(await jobs.busy_elsewhere(conn, self.run_id, held))
            return claims

        try:
            claims = await store.transact(work, "claiming jobs")
        except BaseException:  # a database error, a cancel, a bug: no lease outlives its claim
            await release_taken()
            raise
        if not claims:
            self.more = False
        return claims

    def _tell_busy(self, busy: list[tuple[int, str, str]]) -> None:
        for job_id, site, kind in busy:
            if job_id not in self._told_busy:
                self._told_busy.add(job_id)
                self.stats.inc_value("civicband/jobs/skipped")
                logger.info(
                    "Job %s %s/%s is running in another process: skipped", job_id, site, kind
                )
