"""The backfill_jobs table: create, resolve which sites to crawl, finish."""

from __future__ import annotations

from typing import Any

import psycopg

from civicband.db import query


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


async def get_job(conn: psycopg.AsyncConnection, job_id: int) -> dict[str, Any] | None:
    """One job row as a dict."""
    cursor = conn.cursor(row_factory=psycopg.rows.dict_row)
    await cursor.execute(query("get_job"), {"job_id": job_id})
    return await cursor.fetchone()
