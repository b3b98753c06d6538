"""The mirror's pages and rejected rows: storing a page's rows, digests, listings, deleting.

Each function runs inside a transaction its caller holds, beside the fenced job write that
makes it count (civicband/jobs.py): rows and the job's cursor commit together or not at all.

Every change to a page takes a version (the change feed): the functions that change pages take
the versions lock right before their first version-taking statement, so that it is held for the
rest of the transaction only, and announce the highest version they took (NOTIFY at commit).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import psycopg

from civicband import digest
from civicband.db import query
from civicband.rows import DUPLICATE_ID, INVALID_ID, PageRows

# The first key of the advisory lock every version-taking transaction holds until it commits.
VERSIONS_CLASS = 0x63627672  # "cbvr"
CHANNEL = "civicband_changes"


@dataclass(frozen=True)
class Stored:
    """What storing one page's rows did."""

    created: int  # new to the mirror
    updated: int  # already in it, changed or not
    changed: int  # already in it and changed
    unrejected: int = 0  # rejections of ids stored now
    dropped: int = 0  # pages whose id's row arrived malformed: the rejection replaces them
    restored: int = 0  # removed pages back from their tombstones, first-seen time kept


def _params(subdomain: str, document_type: str) -> dict[str, str]:
    return {"subdomain": subdomain, "document_type": document_type}


async def lock_versions(conn: psycopg.AsyncConnection) -> None:
    """Take versions in commit order: held until this transaction ends (SPEC §3, change feed)."""
    await conn.execute(query("lock_versions"), {"class": VERSIONS_CLASS})


async def announce(conn: psycopg.AsyncConnection, version: int | None) -> None:
    """Tell LISTENers the highest version this transaction took; sent only if it commits."""
    if version is not None:
        await conn.execute(query("notify_changes"), {"version": version})


async def _remove(
    conn: psycopg.AsyncConnection, name: str, params: dict[str, Any]
) -> tuple[int, int | None]:
    """Run a removal that turns pages into tombstones: (pages removed, highest version)."""
    row = await (await conn.execute(query(name), params)).fetchone()
    assert row is not None
    return int(row[0]), row[1]


async def store_rows(
    conn: psycopg.AsyncConnection,
    subdomain: str,
    document_type: str,
    job_id: int,
    page: PageRows,
    *,
    remember: bool,
) -> Stored:
    """Upsert a page's clean rows, quarantine its bad ones; `remember` keeps ids for the sweep."""
    params = _params(subdomain, document_type)
    created = changed = restored = unrejected = dropped = 0
    highest: list[int] = []  # the highest version of each statement that took some
    rejected_ids = [r.page_id for r in page.rejected if r.page_id is not None]
    if page.clean:
        async with conn.cursor().copy(query("copy_staging")) as copy:
            # copy_staging is a binary COPY: PostgreSQL takes the rows without parsing text,
            # which costs it about a third less than text format.
            copy.set_types(page.copy_types)
            for row in page.clean:
                await copy.write_row(row)
        await conn.execute(query("upsert_documents"), params)
        if remember:
            await conn.execute(query("remember_seen"), {"job_id": job_id})
        unrejected = (
            await conn.execute(
                query("unreject_stored"),
                {**params, "invalid_id": INVALID_ID, "rejected_ids": rejected_ids},
            )
        ).rowcount
    if page.rejected:
        await _reject(conn, params, job_id, page)
    # Versions last: the lock they need is held from here to the commit.
    await lock_versions(conn)
    if page.clean:
        counts = await (await conn.execute(query("upsert_pages"), params)).fetchone()
        assert counts is not None
        created, changed, restored = int(counts[0]), int(counts[1]), int(counts[2])
        if created + changed + restored:  # unchanged rows spend a nextval but take no version
            highest.append(counts[3])
    if page.rejected:
        # A twin of a row this page stores leaves that row alone: the source holds both.
        stored_ids = {row.id for row in page.clean}
        ids = [i for i in rejected_ids if i not in stored_ids]
        # A row rejected now replaces the page its id had: removed like any vanished page.
        dropped, version = await _remove(conn, "delete_pages", {**params, "ids": ids})
        highest += [version] if version is not None else []
        if dropped:
            await conn.execute(query("delete_orphan_documents"), params)
    await announce(conn, max(highest, default=None))
    updated = len(page.clean) - created - restored
    return Stored(created, updated, changed, unrejected, dropped, restored)


async def _reject(
    conn: psycopg.AsyncConnection, params: dict[str, str], job_id: int, page: PageRows
) -> None:
    """Quarantine a page's bad rows: one rejection per distinct raw row, its newest per id."""
    async with conn.cursor() as cursor:
        await cursor.executemany(
            query("reject_row"),
            [
                {
                    **params,
                    "row_id": rejection.row_id,
                    "reason": rejection.reason,
                    "raw": rejection.raw,
                    "job_id": job_id,
                    "content_fp": rejection.content_fp,
                    "copies": rejection.copies,
                    "invalid_id": INVALID_ID,
                }
                for rejection in page.rejected
            ],
        )


async def seen_digest(
    conn: psycopg.AsyncConnection, subdomain: str, document_type: str, job_id: int
) -> digest.Digest:
    """What a full pass saw, per hex bucket: counts and id sums, without fingerprints."""
    cursor = await conn.execute(
        query("seen_digest"),
        {**_params(subdomain, document_type), "job_id": job_id, "invalid_id": INVALID_ID},
    )
    columns = [c.name for c in cursor.description or ()]
    return digest.read_digest(
        dict(zip(columns, row, strict=True)) for row in await cursor.fetchall()
    )


async def sweepable(
    conn: psycopg.AsyncConnection, subdomain: str, document_type: str, job_id: int
) -> frozenset[str]:
    """Hex buckets where a sweep would remove something: read before the source's digest is in."""
    params = {**_params(subdomain, document_type), "job_id": job_id, "invalid_id": INVALID_ID}
    rows = await (await conn.execute(query("sweepable"), params)).fetchall()
    return frozenset(row[0] for row in rows)


async def sweep_preview(
    conn: psycopg.AsyncConnection,
    subdomain: str,
    document_type: str,
    job_id: int,
    buckets: list[str],
) -> tuple[int, int]:
    """(pages here, pages a sweep of these buckets would remove): what the shrink guard weighs."""
    params = {**_params(subdomain, document_type), "job_id": job_id, "buckets": buckets}
    row = await (await conn.execute(query("sweep_preview"), params)).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


async def sweep(
    conn: psycopg.AsyncConnection,
    subdomain: str,
    document_type: str,
    job_id: int,
    buckets: list[str],
) -> tuple[int, int]:
    """After a complete pass: remove what it did not see in these buckets; (pages, rejections)."""
    params = {
        **_params(subdomain, document_type),
        "job_id": job_id,
        "buckets": buckets,
        "invalid_id": INVALID_ID,
    }
    rejections = (await conn.execute(query("sweep_rejections"), params)).rowcount
    unseen = [
        row[0] for row in await (await conn.execute(query("sweep_unseen"), params)).fetchall()
    ]
    await lock_versions(conn)
    pages, version = await _remove(conn, "delete_pages", {**params, "ids": unseen})
    await conn.execute(query("delete_orphan_documents"), _params(subdomain, document_type))
    await announce(conn, version)
    return pages, rejections


async def forget_seen(conn: psycopg.AsyncConnection, *job_ids: int) -> None:
    """Forget the ids these jobs' passes saw: a verdict is in, or a pass starts anew."""
    await conn.execute(query("forget_seen"), {"job_ids": list(job_ids)})


async def delete(
    conn: psycopg.AsyncConnection,
    subdomain: str,
    document_type: str,
    *,
    page_ids: Iterable[str] = (),
    rejected_ids: Iterable[str] = (),
    rejected_md5s: Iterable[str] = (),
) -> tuple[int, int]:
    """Remove pages and rejections a complete listing of the source lacks; (pages, rejections)."""
    params = _params(subdomain, document_type)
    pages = rejections = 0
    page_ids, rejected_ids, rejected_md5s = list(page_ids), list(rejected_ids), list(rejected_md5s)
    if rejected_ids or rejected_md5s:
        rejections = (
            await conn.execute(
                query("delete_rejections"),
                {**params, "row_ids": rejected_ids, "raw_md5s": rejected_md5s},
            )
        ).rowcount
    if page_ids:
        await lock_versions(conn)
        pages, version = await _remove(conn, "delete_pages", {**params, "ids": page_ids})
        await conn.execute(query("delete_orphan_documents"), params)
        await announce(conn, version)
    return pages, rejections


async def known_rows(
    conn: psycopg.AsyncConnection, subdomain: str, document_type: str, ids: list[str]
) -> dict[str, dict[str, Any]]:
    """Of these ids, pages and removed pages kept: {id: the row's id-hashed part, as the source
    gives it}.

    The id hashes kind, meeting, date, page and text, so these are what the source holds now;
    only the columns outside the hash need fetching to update such a page or bring it back.
    """
    params: dict[str, Any] = {**_params(subdomain, document_type), "ids": ids}
    rows = await (await conn.execute(query("known_rows"), params)).fetchall()
    return {
        row[0]: {
            "id": row[0],
            "meeting": row[1],
            "date": row[2].isoformat(),
            "page": row[3],
            "text": row[4],
        }
        for row in rows
    }


async def purge_tombstones(conn: psycopg.AsyncConnection, days: float) -> int:
    """Forget removed pages older than CIVICBAND_TOMBSTONE_DAYS; how many were purged."""
    return (await conn.execute(query("purge_tombstones"), {"days": days})).rowcount


async def local_digest(
    conn: psycopg.AsyncConnection,
    subdomain: str,
    document_type: str,
    *,
    depth: int = 2,
    within: list[str] | None = None,
) -> digest.Digest:
    """The mirror's digest of one (site, type), pages plus rejected rows, by buckets of `depth`
    hex digits: of every bucket, or of those in some buckets (all as deep) only."""
    cursor = await conn.execute(
        query("local_digest"),
        {
            **_params(subdomain, document_type),
            "own_rows": [INVALID_ID, DUPLICATE_ID],
            "depth": depth,
            "within": within,
            "within_depth": len(within[0]) if within else 0,
        },
    )
    columns = [c.name for c in cursor.description or ()]
    return digest.read_digest(
        dict(zip(columns, row, strict=True)) for row in await cursor.fetchall()
    )


async def local_counts(
    conn: psycopg.AsyncConnection, subdomain: str, document_type: str
) -> tuple[int, int]:
    """(pages, rejected rows) of one (site, type)."""
    row = await (
        await conn.execute(query("local_counts"), _params(subdomain, document_type))
    ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


async def listing(
    conn: psycopg.AsyncConnection, subdomain: str, document_type: str, buckets: list[str]
) -> tuple[dict[str, int], dict[str, int]]:
    """Pages and rejections of some hex buckets, all as deep: ({id: fingerprint}, {row_id:
    fingerprint})."""
    depth = len(buckets[0]) if buckets else 2
    params: dict[str, Any] = {
        **_params(subdomain, document_type),
        "buckets": buckets,
        "depth": depth,
    }
    pages = await (await conn.execute(query("local_listing"), params)).fetchall()
    rejected = await (await conn.execute(query("rejected_listing"), params)).fetchall()
    return {row[0]: int(row[1]) for row in pages}, {row[0]: int(row[1]) for row in rejected}


async def other_listing(
    conn: psycopg.AsyncConnection, subdomain: str, document_type: str
) -> tuple[dict[str, int], list[tuple[str | None, str]]]:
    """The `~` bucket here: ({page id: fingerprint}, [(rejected row id, raw md5)])."""
    params = _params(subdomain, document_type)
    pages = await (await conn.execute(query("local_other"), params)).fetchall()
    rejected = await (await conn.execute(query("rejected_other"), params)).fetchall()
    return {row[0]: int(row[1]) for row in pages}, [(row[0], row[1]) for row in rejected]


async def exact_values(
    conn: psycopg.AsyncConnection, subdomain: str, document_type: str, ids: list[str]
) -> tuple[dict[str, tuple[str | None, ...]], set[str]]:
    """exact=true: of these ids, ({page id: (page_image, entities_json, votes_json)}, rejected)."""
    params: dict[str, Any] = {**_params(subdomain, document_type), "ids": ids}
    pages = await (await conn.execute(query("exact_values"), params)).fetchall()
    rejected = await (await conn.execute(query("exact_rejected"), params)).fetchall()
    return {row[0]: tuple(row[1:]) for row in pages}, {row[0] for row in rejected}


async def hex_page_count(conn: psycopg.AsyncConnection, subdomain: str, document_type: str) -> int:
    """Pages whose ids are 12 lowercase hex digits: those exact=true did not meet are extra."""
    row = await (
        await conn.execute(query("hex_page_count"), _params(subdomain, document_type))
    ).fetchone()
    assert row is not None
    return int(row[0])
