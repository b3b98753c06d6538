"""The jobs table and its runs: the only writer of backfill_jobs and crawl_runs.

Every transition is one function here, each one named query (sql/queries.sql), as
procrastinate's manager owns its jobs table. A claim gives a job a new lease token; every
write its holder makes afterwards names the token and changes nothing once another process
has claimed the job (`LeaseLost`). Liveness is PostgreSQL's: a holder keeps a session advisory
lock on each job it runs, and on its run, on one connection (civicband.store.Store).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from civicband import mirror
from civicband.db import query
from civicband.leases import LEASE_CLASS, RUN_CLASS
from civicband.verify import Verdict

logger = logging.getLogger(__name__)

QUEUE_CLASS = 0x63627175  # "cbqu": opening runs and queueing their work take turns
FULL, CATCHUP, VERIFY = "full", "catchup", "verify"


class LeaseLost(Exception):
    """Another process claimed this job since we did: we must stop writing it."""


@dataclass(frozen=True)
class Lease:
    """A job this process holds, and the token its every write names."""

    job_id: int
    token: int
    subdomain: str
    document_type: str

    def params(self) -> dict[str, Any]:
        """The fencing parameters of every holder write."""
        return {"job_id": self.job_id, "token": self.token}

    def __str__(self) -> str:
        return f"job {self.job_id} {self.subdomain}/{self.document_type}"


@dataclass(frozen=True)
class Claim:
    """A job just claimed: its lease and where it stands."""

    lease: Lease
    mode: str
    cursor: str | None
    exhausted: bool
    pages_fetched: int
    took_over: bool  # it was running under a lease that is gone


@dataclass(frozen=True)
class RunArguments:
    """What makes two processes' work the same run."""

    subdomains: tuple[str, ...]  # ("all",) or sorted names
    document_types: tuple[str, ...]
    mode: str  # "default", "full", "repair" or "verify_only"
    allow_shrink: bool
    exact: bool = False  # values compared one by one: another check, so another run

    def key(self) -> str:
        """A stable key for these arguments."""
        text = json.dumps(self.as_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def as_json(self) -> dict[str, Any]:
        """The arguments as they are recorded with the run."""
        return {
            "subdomains": list(self.subdomains),
            "document_types": list(self.document_types),
            "mode": self.mode,
            "allow_shrink": self.allow_shrink,
            # Named only when asked: a run without it keeps the key it had before exact existed.
            **({"exact": True} if self.exact else {}),
        }


@dataclass
class Queued:
    """What queueing a run's work did, for the log."""

    added: int = 0
    reopened: int = 0
    taken_over: int = 0  # of the reopened: abandoned while running, their holder gone
    abandoned: int = 0
    skipped: list[tuple[str, str, int]] = field(default_factory=list)  # (site, type, job id)


@dataclass(frozen=True)
class Decision:
    """What `enqueue` decided about another process's job, and the token it saw it under."""

    subdomain: str
    document_type: str
    job_id: int
    token: int | None
    mode: str  # the mode it continues in, or its replacement's
    recrawl: bool = False  # its pass starts anew (a failed verification)
    taken_over: bool = False  # it was running, its holder gone


async def _decide(
    conn: psycopg.AsyncConnection,
    name: str,
    decisions: list[Decision],
    params: dict[str, Any],
    queued: Queued,
) -> list[Decision]:
    """Decide only about jobs still as seen: one claimed or held again meanwhile is skipped."""
    rows = await (
        await conn.execute(
            query(name),
            {
                **params,
                "job_ids": [x.job_id for x in decisions],
                "tokens": [x.token for x in decisions],
                "class": LEASE_CLASS,
            },
        )
    ).fetchall()
    done = {int(row[0]) for row in rows}
    for x in decisions:
        if x.job_id not in done:
            queued.skipped.append((x.subdomain, x.document_type, x.job_id))
    return [x for x in decisions if x.job_id in done]


async def open_run(
    conn: psycopg.AsyncConnection, arguments: RunArguments, hold: Callable[[int], Awaitable[None]]
) -> tuple[int, bool]:
    """Join the live run with these arguments, or start a new one: (run id, joined).

    Must run inside the transaction that queues the run's work (`enqueue`), which holds the
    queue lock: a process deciding whether a run is alive then sees every process that joined.
    `hold` takes the run's shared lock on the lease connection.
    """
    await lock_queue(conn)
    key = arguments.key()
    row = await (
        await conn.execute(query("newest_run"), {"run_key": key, "class": RUN_CLASS})
    ).fetchone()
    joined = row is not None and bool(row[1])
    if joined:
        run_id = int(row[0])
    else:
        created = await (
            await conn.execute(
                query("create_run"), {"run_key": key, "arguments": Jsonb(arguments.as_json())}
            )
        ).fetchone()
        assert created is not None
        run_id = int(created[0])
    await hold(run_id)
    return run_id, joined


async def lock_queue(conn: psycopg.AsyncConnection) -> None:
    """Take turns with other processes queueing work, until this transaction ends."""
    await conn.execute(query("lock_queue"), {"class": QUEUE_CLASS})


def _new_mode(mode: str, has_pass: bool) -> str:
    """The mode of a new job: catch-up where the mirror holds a completed pass."""
    if mode == "verify_only":
        return VERIFY
    if mode == "repair":
        return CATCHUP
    if mode == "full":
        return FULL
    return CATCHUP if has_pass else FULL


async def enqueue(
    conn: psycopg.AsyncConnection,
    run_id: int,
    wanted: Sequence[tuple[str, str]],
    *,
    mode: str,
    resume: bool,
) -> Queued:
    """Queue the run's (site, type) work, as SPEC §3 says of `resume`; idempotent per run.

    For each (site, type): nothing if this run has it already; skipped if another live run
    or process holds it; an abandoned job is continued (resume) or marked failed and replaced;
    a failed or paused one is continued with resume (a failed verification is fetched again);
    otherwise a new job is queued. What is decided about another process's job applies only
    if it is still as seen: not claimed since (its token) and its lease not held again.
    """
    queued = Queued()
    if not wanted:
        return queued
    cursor = conn.cursor(row_factory=dict_row)
    rows = await (
        await cursor.execute(
            query("newest_jobs"),
            {
                "subdomains": [s for s, _ in wanted],
                "document_types": [t for _, t in wanted],
                "lease_class": LEASE_CLASS,
                "run_class": RUN_CLASS,
            },
        )
    ).fetchall()
    new: list[tuple[str, str, str, int | None]] = []  # (site, type, mode, the job it replaces)
    reopen: list[Decision] = []
    abandoned: list[Decision] = []
    for row in rows:
        site, kind, job_id, status = (
            row["subdomain"],
            row["document_type"],
            row["id"],
            row["status"],
        )
        fresh = _new_mode(mode, row["has_pass"])
        if job_id is None:
            new.append((site, kind, fresh, None))
            continue
        if row["run_id"] == run_id:
            continue  # this run has it already (another process queued it)
        held = status == "running" and row["leased"]
        queued_live = status == "pending" and row["run_live"]
        if held or queued_live:
            queued.skipped.append((site, kind, job_id))
            continue
        seen = Decision(site, kind, job_id, row["lease_token"], fresh)
        if status in ("pending", "running"):  # abandoned: its process, or its whole run, died
            if not row["has_progress"]:
                reopen.append(seen)
            elif resume:
                reopen.append(replace(seen, mode=row["mode"], taken_over=status == "running"))
            else:
                abandoned.append(seen)
                new.append((site, kind, fresh, job_id))
            continue
        if resume and status in ("failed", "paused"):
            if row["verify_status"] == "failed":
                again = CATCHUP if row["has_pass"] else FULL
                reopen.append(replace(seen, mode=again, recrawl=True))
            else:
                reopen.append(replace(seen, mode=row["mode"]))
            continue
        new.append((site, kind, fresh, None))
    if abandoned:
        failed = {x.job_id for x in await _decide(conn, "fail_abandoned", abandoned, {}, queued)}
        queued.abandoned = len(failed)
        new = [x for x in new if x[3] is None or x[3] in failed]
    if reopen:
        extra = {
            "run_id": run_id,
            "modes": [x.mode for x in reopen],
            "recrawl": [x.recrawl for x in reopen],
        }
        reopened = await _decide(conn, "reopen_jobs", reopen, extra, queued)
        recrawled = [x.job_id for x in reopened if x.recrawl]
        if recrawled:
            await mirror.forget_seen(conn, *recrawled)  # a pass started anew forgets what it saw
        queued.reopened = len(reopened)
        queued.taken_over = sum(x.taken_over for x in reopened)
    if new:
        inserted = await conn.execute(
            query("insert_jobs"),
            {
                "run_id": run_id,
                "subdomains": [x[0] for x in new],
                "document_types": [x[1] for x in new],
                "modes": [x[2] for x in new],
            },
        )
        queued.added = inserted.rowcount
    return queued


async def claim(
    conn: psycopg.AsyncConnection,
    run_id: int,
    limit: int,
    try_lease: Callable[[int], Awaitable[bool]],
    *,
    retried: Collection[int] = (),
) -> list[Claim]:
    """Claim up to `limit` jobs of the run nobody holds, each under a new lease token.

    Rows are locked with SKIP LOCKED, so claimers never wait for each other; the caller
    releases the leases taken if the transaction does not commit. `retried` are the jobs of
    an attempt whose outcome is unknown: found running, they are this claim's, not taken over.
    """
    if limit <= 0:
        return []
    rows = await (
        await conn.execute(
            query("claimable_jobs"), {"run_id": run_id, "limit": limit, "class": LEASE_CLASS}
        )
    ).fetchall()
    taken: dict[int, bool] = {}
    for job_id, status in rows:
        if await try_lease(job_id):
            taken[job_id] = status == "running" and job_id not in retried
    if not taken:
        return []
    claimed = await (await conn.execute(query("take_jobs"), {"job_ids": list(taken)})).fetchall()
    return [
        Claim(
            lease=Lease(int(job_id), int(token), site, kind),
            mode=mode,
            cursor=cursor,
            exhausted=bool(exhausted),
            pages_fetched=int(fetched),
            took_over=taken[job_id],
        )
        for job_id, token, site, kind, mode, cursor, exhausted, fetched, _ in claimed
    ]


async def busy_elsewhere(
    conn: psycopg.AsyncConnection, run_id: int, mine: Iterable[int]
) -> list[tuple[int, str, str]]:
    """Jobs of the run other processes are running."""
    rows = await (
        await conn.execute(query("busy_elsewhere"), {"run_id": run_id, "mine": list(mine)})
    ).fetchall()
    return [(int(job_id), site, kind) for job_id, site, kind in rows]


# ---- fenced transitions ------------------------------------------------------------------------


async def _fenced(
    conn: psycopg.AsyncConnection, name: str, lease: Lease, params: dict[str, Any], done: str
) -> None:
    """Run a holder write; if it changed nothing, tell an earlier commit of it from a lost lease.

    A retried transaction whose first commit did succeed finds the job already in `done`
    under our own token: that is success, not a lost lease.
    """
    cursor = await conn.execute(query(name), {**params, **lease.params()})
    if cursor.rowcount:
        return
    row = await (await conn.execute(query("job_lease_state"), lease.params())).fetchone()
    if row is not None and row[1] == lease.token and row[0] == done:
        return
    raise LeaseLost(f"{lease} is held by another process now")


async def lock_for_page(conn: psycopg.AsyncConnection, lease: Lease, cursor_in: str | None) -> bool:
    """Lock the job row for a page: True if the page comes next, False if it is already stored.

    The lease is checked first, so a page of a job taken over is a lost lease, never a
    duplicate; a page after the last one (the cursor is NULL again then) is a duplicate.
    """
    row = await (await conn.execute(query("lock_job"), {"job_id": lease.job_id})).fetchone()
    if row is None or row[1] != lease.token or row[0] != "running":
        raise LeaseLost(f"{lease} is held by another process now")
    status, _, last_cursor, exhausted = row
    return not exhausted and last_cursor == cursor_in


async def advance(
    conn: psycopg.AsyncConnection,
    lease: Lease,
    *,
    cursor_out: str | None,
    fetched: int,
    created: int,
    updated: int,
    errors: int,
    removed: int,
    final: bool,
    changed: int = 0,
    restored: int = 0,
) -> None:
    """A page stored: the cursor moves on and the counters grow, in the page's transaction."""
    params = {
        "cursor_out": cursor_out,
        "fetched": fetched,
        "created": created,
        "updated": updated,
        "changed": changed,
        "restored": restored,
        "errors": errors,
        "removed": removed,
        "final": final,
    }
    await _fenced(conn, "advance_job", lease, params, "running")


async def count(
    conn: psycopg.AsyncConnection,
    lease: Lease,
    *,
    fetched: int = 0,
    created: int = 0,
    updated: int = 0,
    errors: int = 0,
    removed: int = 0,
    changed: int = 0,
    restored: int = 0,
) -> None:
    """Counters of rows stored without a cursor (catch-up) or removed, in their transaction."""
    params = {
        "fetched": fetched,
        "created": created,
        "updated": updated,
        "changed": changed,
        "restored": restored,
        "errors": errors,
        "removed": removed,
    }
    await _fenced(conn, "count_job", lease, params, "running")


async def restart_full(conn: psycopg.AsyncConnection, lease: Lease) -> None:
    """The job becomes a full pass from the first page."""
    await _fenced(conn, "restart_full", lease, {}, "running")


async def fail(
    conn: psycopg.AsyncConnection, lease: Lease, error: str, *, retries_exhausted: bool = False
) -> None:
    """The job cannot go on: failed with why, its cursor kept for resume."""
    params = {"last_error": error, "retry_increment": 1 if retries_exhausted else 0}
    await _fenced(conn, "fail_job", lease, params, "failed")


async def record_verdict(conn: psycopg.AsyncConnection, lease: Lease, verdict: Verdict) -> None:
    """Record what verification found and finish the job by it."""
    params = {
        "expected": verdict.expected,
        "actual": verdict.actual,
        "rejected": verdict.rejected,
        "missing": verdict.missing,
        "extra": verdict.extra,
        "stale": verdict.stale,
        "verify_status": verdict.status,
        "status": verdict.job_status,
        "message": verdict.message,
        "verify_method": verdict.method,
    }
    await _fenced(conn, "record_verdict", lease, params, verdict.job_status)


async def pause(conn: psycopg.AsyncConnection, leases: Sequence[Lease]) -> list[int]:
    """Jobs still held when the crawl stops become paused; returns those that were still ours."""
    if not leases:
        return []
    rows = await (
        await conn.execute(
            query("pause_jobs"),
            {"job_ids": [x.job_id for x in leases], "tokens": [x.token for x in leases]},
        )
    ).fetchall()
    return sorted(int(row[0]) for row in rows)


async def moved_leases(conn: psycopg.AsyncConnection, leases: Sequence[Lease]) -> list[int]:
    """Of jobs whose lock was taken again, those another process claimed or reopened meanwhile."""
    rows = await (
        await conn.execute(
            query("moved_leases"),
            {"job_ids": [x.job_id for x in leases], "tokens": [x.token for x in leases]},
        )
    ).fetchall()
    return [int(row[0]) for row in rows]


async def summaries(conn: psycopg.AsyncConnection, job_ids: Sequence[int]) -> list[dict[str, Any]]:
    """The jobs as the end-of-run summary shows them."""
    if not job_ids:
        return []
    cursor = conn.cursor(row_factory=dict_row)
    return await (
        await cursor.execute(query("job_summaries"), {"job_ids": list(job_ids)})
    ).fetchall()


# ---- municipalities -------------------------------------------------------------------------


async def all_subdomains(conn: psycopg.AsyncConnection) -> list[str]:
    """Every municipality the mirror knows of."""
    rows = await (await conn.execute(query("municipality_subdomains"))).fetchall()
    return [row[0] for row in rows]


async def known_subdomains(conn: psycopg.AsyncConnection, subdomains: list[str]) -> set[str]:
    """Which of these sites are already in municipalities."""
    cursor = await conn.execute(query("known_subdomains"), {"subdomains": subdomains})
    return {row[0] for row in await cursor.fetchall()}


async def source_facts(
    conn: psycopg.AsyncConnection, subdomains: list[str]
) -> list[tuple[str, str]]:
    """Which Datasette line these sites spoke before: (site, line), for those known."""
    cursor = await conn.execute(query("source_facts"), {"subdomains": subdomains})
    return [(row[0], row[1]) for row in await cursor.fetchall()]


async def remember_source(conn: psycopg.AsyncConnection, subdomain: str, dialect: str) -> None:
    """Keep which Datasette line a site speaks for the next run (one probe request less)."""
    await conn.execute(query("remember_source"), {"subdomain": subdomain, "dialect": dialect})


async def add_municipality(conn: psycopg.AsyncConnection, subdomain: str) -> bool:
    """A named site answered with JSON: it joins municipalities; True if it was new."""
    cursor = await conn.execute(query("ensure_municipality"), {"subdomain": subdomain})
    return cursor.rowcount == 1
