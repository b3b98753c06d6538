"""The backfill_jobs table: create, resolve which sites to crawl, finish."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import psycopg

from civicband.db import query

if TYPE_CHECKING:
    from civicband.store import Store

CLAIM_CLASS = 0x6362636C  # "cbcl": claimers of one (site, type) take turns


async def all_subdomains(conn: psycopg.AsyncConnection) -> list[str]:
    """Every municipality the mirror knows of."""
    rows = await (await conn.execute(query("municipality_subdomains"))).fetchall()
    return [row[0] for row in rows]


async def known_subdomains(conn: psycopg.AsyncConnection, subdomains: list[str]) -> set[str]:
    """Which of these sites are already in municipalities."""
    cursor = await conn.execute(query("known_subdomains"), {"subdomains": subdomains})
    return {row[0] for row in await cursor.fetchall()}


async def create_job(
    conn: psycopg.AsyncConnection, subdomain: str, document_type: str, *, new_site: bool = False
) -> tuple[int, bool]:
    """Start a running job for one (site, type): (job id, whether the site is new)."""
    added = False
    async with conn.transaction():
        if new_site:
            inserted = await conn.execute(query("ensure_municipality"), {"subdomain": subdomain})
            added = inserted.rowcount == 1
        cursor = await conn.execute(
            query("create_job"), {"subdomain": subdomain, "document_type": document_type}
        )
        row = await cursor.fetchone()
    assert row is not None
    return int(row[0]), added


async def finish_job(
    conn: psycopg.AsyncConnection,
    job_id: int,
    status: str,
    *,
    last_error: str | None = None,
    retry_increment: int = 0,
) -> bool:
    """Close a running job; False when it was no longer running."""
    cursor = await conn.execute(
        query("finish_job"),
        {
            "job_id": job_id,
            "status": status,
            "last_error": last_error,
            "retry_increment": retry_increment,
        },
    )
    return cursor.rowcount == 1


@dataclass(frozen=True)
class Claim:
    """What start() got for one (site, type): a job to run from a cursor, or a live one to skip."""

    job_id: int
    cursor: str | None
    how: str  # "new", "resumed", "took over" (abandoned), or "skipped" (live elsewhere)
    exhausted: bool = False  # its pages were all stored; only verification is left

    @property
    def runs(self) -> bool:
        """This process runs the job."""
        return self.how != "skipped"


async def claim(
    conn: psycopg.AsyncConnection, store: Store, subdomain: str, document_type: str, *, resume: bool
) -> Claim:
    """Choose and lease the job to run for one (site, type), as SPEC §3 `resume` says."""
    params = {"subdomain": subdomain, "document_type": document_type}
    taken: int | None = None
    try:
        async with conn.transaction():
            await conn.execute(query("lock_site_type"), {**params, "class": CLAIM_CLASS})
            newest = await (await conn.execute(query("newest_job"), params)).fetchone()
            if newest is not None:
                job_id, status, cursor, exhausted = newest
                if status == "running":
                    if not await store.try_lease(job_id):
                        return Claim(job_id, cursor, "skipped")
                    taken = job_id
                    if resume:
                        return Claim(job_id, cursor, "took over", exhausted)
                    await conn.execute(query("abandon_job"), {"job_id": job_id})
                elif resume and status in ("failed", "paused"):
                    if not await store.try_lease(job_id):
                        return Claim(job_id, cursor, "skipped")
                    taken = job_id
                    await conn.execute(query("resume_job"), {"job_id": job_id})
                    return Claim(job_id, cursor, "resumed", exhausted)
            row = await (await conn.execute(query("create_job"), params)).fetchone()
            assert row is not None
            new_id = int(row[0])
            if taken is not None:
                await store.release(taken)
                taken = None
            taken = new_id
            await store.try_lease(new_id)
            return Claim(new_id, None, "new")
    except BaseException:
        if taken is not None:
            await store.release(taken)
        raise


async def local_buckets(
    conn: psycopg.AsyncConnection, subdomain: str, document_type: str
) -> dict[str, int]:
    """Local pages plus rejected rows per 2-character id prefix."""
    params = {"subdomain": subdomain, "document_type": document_type}
    rows = await (await conn.execute(query("local_buckets"), params)).fetchall()
    return {row[0]: int(row[1]) for row in rows if row[0] is not None}


async def ids_in_bucket(
    conn: psycopg.AsyncConnection, subdomain: str, document_type: str, low: str, high: str
) -> tuple[set[str], set[str]]:
    """Local page ids and rejected row ids in [low, high)."""
    params = {"subdomain": subdomain, "document_type": document_type, "low": low, "high": high}
    local = await (await conn.execute(query("local_ids_in_bucket"), params)).fetchall()
    rejected = await (await conn.execute(query("rejected_ids_in_bucket"), params)).fetchall()
    return {row[0] for row in local}, {row[0] for row in rejected}
