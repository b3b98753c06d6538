"""The jobs table's transitions on a real PostgreSQL: fencing, claims, the queue, the page check.

No Datasette here: these drive civicband/jobs.py and civicband/mirror.py directly, as the
crawl does, to pin the rules every process relies on.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from pathlib import Path
from typing import Any

import psycopg
import pytest
from scrapy.signalmanager import SignalManager

from civicband import db, digest, jobs, mirror
from civicband import signals as civicband_signals
from civicband.rows import DUPLICATE_ID, INVALID_ID, MAX_ID_LENGTH, clean_page
from civicband.store import Store
from civicband.verify import Verdict

ROW = {
    "id": "a1b2c3d4e5f6",
    "meeting": "City Council",
    "date": "2024-01-02",
    "page": 1,
    "text": "Call to order",
    "page_image": None,
    "entities_json": None,
    "votes_json": None,
}


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


async def opened(url: str, tmp_path: Path, *, check_interval: float = 3600) -> Store:
    """A process's store; by default one that does not notice its lease connection die."""
    store = Store(
        url,
        tmp_path / ".civicband",
        pool_size=4,
        timeout=5,
        retries=1,
        check_interval=check_interval,
    )
    await store.open()
    return store


async def queue(store: Store, sites: list[str], *, mode: str = "default", resume: bool = False):
    """Open a run for these sites (both types) and queue them, as a crawl's start does."""
    arguments = jobs.RunArguments(tuple(sorted(sites)), ("agenda", "minutes"), mode, False)

    async def work(conn: Any) -> tuple[int, jobs.Queued]:
        for site in sites:
            await jobs.add_municipality(conn, site)
        run_id, _ = await jobs.open_run(conn, arguments, store.join_run)
        wanted = [(s, t) for s in sites for t in ("agenda", "minutes")]
        return run_id, await jobs.enqueue(conn, run_id, wanted, mode=mode, resume=resume)

    return await store.transact(work, "queueing")


async def claim(store: Store, run_id: int, limit: int = 10) -> list[jobs.Claim]:
    return await store.transact(
        lambda conn: jobs.claim(conn, run_id, limit, store.try_lease), "claiming"
    )


async def write_page(
    store: Store, lease: jobs.Lease, cursor_in: str | None, cursor_out: str | None
) -> bool:
    """The pipeline's page transaction; False when the page was stored already."""
    page = clean_page([ROW])

    async def work(conn: Any) -> bool:
        if not await jobs.lock_for_page(conn, lease, cursor_in):
            return False
        stored = await mirror.store_rows(
            conn, lease.subdomain, lease.document_type, lease.job_id, page, remember=True
        )
        await jobs.advance(
            conn,
            lease,
            cursor_out=cursor_out,
            fetched=1,
            created=stored.created,
            updated=stored.updated,
            errors=0,
            removed=stored.dropped,
            final=cursor_out is None,
        )
        return True

    return await store.transact(work, "storing a page")


def row_of(url: str, job_id: int) -> dict[str, Any]:
    with psycopg.connect(url, row_factory=psycopg.rows.dict_row) as conn:
        found = conn.execute("SELECT * FROM backfill_jobs WHERE id = %s", [job_id]).fetchone()
    assert found is not None
    return found


def test_a_retried_commit_of_a_one_page_job_counts_once(database_url, tmp_path):
    async def scenario() -> tuple[bool, bool, int]:
        store = await opened(database_url, tmp_path)
        try:
            run_id, _ = await queue(store, ["one.ca"])
            (first, *_) = await claim(store, run_id)
            # The only page: its cursor in and out are both NULL, as a fresh job's is.
            stored = await write_page(store, first.lease, None, None)
            # The commit succeeded but the answer was lost: the same transaction runs again.
            again = await write_page(store, first.lease, None, None)
            return stored, again, first.lease.job_id
        finally:
            await store.close()

    stored, again, job_id = run(scenario())
    assert (stored, again) == (True, False)
    job = row_of(database_url, job_id)
    assert (job["pages_fetched"], job["pages_created"], job["batches_committed"]) == (1, 1, 1)
    assert job["pages_exhausted_at"] is not None


def test_a_stale_holder_can_change_nothing_after_a_takeover(database_url, tmp_path):
    async def scenario() -> dict[str, Any]:
        old = await opened(database_url, tmp_path)
        new = await opened(database_url, tmp_path)
        try:
            run_id, _ = await queue(old, ["fenced.ca"])
            claims = await claim(old, run_id, limit=1)
            stale = claims[0].lease
            assert await write_page(old, stale, None, "c1")
            # The old holder's lease connection dies; another process takes the job over.
            await old.leases.connection.close()
            run2, queued = await queue(new, ["fenced.ca"], resume=True)
            assert queued.taken_over == 1
            (taken,) = [c for c in await claim(new, run2) if c.lease.job_id == stale.job_id]
            assert taken.lease.token != stale.token and taken.cursor == "c1"
            assert await write_page(new, taken.lease, "c1", "c2")
            outcome: dict[str, Any] = {}
            for name, write in {
                # the old holder's next page: a lost lease, never a duplicate
                "page": lambda conn: jobs.lock_for_page(conn, stale, "c1"),
                "fail": lambda conn: jobs.fail(conn, stale, "stale"),
                "verdict": lambda conn: jobs.record_verdict(
                    conn, stale, Verdict("passed", 1, 1, 0, 0, 0, 0, "Complete.")
                ),
                "restart": lambda conn: jobs.restart_full(conn, stale),
                "count": lambda conn: jobs.count(conn, stale, removed=5),
            }.items():
                try:
                    await new.transact(write, name)
                    outcome[name] = "changed"
                except jobs.LeaseLost:
                    outcome[name] = "lost"
            outcome["paused"] = await new.transact(lambda c: jobs.pause(c, [stale]), "pausing")
            outcome["job_id"] = stale.job_id
            return outcome
        finally:
            await old.close()
            await new.close()

    outcome = run(scenario())
    job_id = outcome.pop("job_id")
    assert outcome == {
        "page": "lost",
        "fail": "lost",
        "verdict": "lost",
        "restart": "lost",
        "count": "lost",
        "paused": [],
    }
    job = row_of(database_url, job_id)
    assert (job["status"], job["last_cursor"], job["pages_fetched"], job["pages_removed"]) == (
        "running",
        "c2",
        2,
        0,
    )
    assert job["last_error"] is None and job["verify_status"] is None


def test_a_retried_fenced_write_that_had_committed_is_not_a_lost_lease(database_url, tmp_path):
    async def scenario() -> str:
        store = await opened(database_url, tmp_path)
        try:
            run_id, _ = await queue(store, ["retried.ca"])
            (first, *_) = await claim(store, run_id, limit=1)
            await store.transact(lambda c: jobs.fail(c, first.lease, "boom"), "failing")
            await store.transact(lambda c: jobs.fail(c, first.lease, "boom"), "failing again")
            return row_of(database_url, first.lease.job_id)["status"]
        finally:
            await store.close()

    assert run(scenario()) == "failed"


def _claim_in_process(url: str, home: str, run_id: int, start: Any, done: Any, out: Any) -> None:
    """One claimer process: claim at the same moment as the others, hold until told."""

    async def work() -> None:
        store = await opened(url, Path(home))
        try:
            start.wait(timeout=30)
            claims = await claim(store, run_id, limit=50)
            out.put([c.lease.job_id for c in claims])
            done.wait(timeout=60)  # leases held until every claimer has claimed
        finally:
            await store.close()

    asyncio.run(work())


def test_two_claimers_racing_never_claim_a_job_twice(database_url, tmp_path):
    sites = [f"race{i}.ca" for i in range(20)]

    async def setup() -> int:
        store = await opened(database_url, tmp_path)
        try:
            run_id, queued = await queue(store, sites)
            assert queued.added == 40
            return run_id
        finally:
            await store.close()

    run_id = run(setup())
    context = multiprocessing.get_context("spawn")
    out, done, start = context.Queue(), context.Event(), context.Barrier(4)
    claimers = [
        context.Process(
            target=_claim_in_process, args=(database_url, str(tmp_path), run_id, start, done, out)
        )
        for _ in range(4)
    ]
    for process in claimers:
        process.start()
    try:
        results = [out.get(timeout=60) for _ in claimers]
    finally:
        done.set()
        for process in claimers:
            process.join(timeout=30)
    claimed = [job_id for result in results for job_id in result]
    assert sorted(claimed) == sorted(set(claimed)), "a job was claimed twice"
    assert len(claimed) == 40
    with psycopg.connect(database_url) as conn:
        tokens = conn.execute(
            "SELECT count(DISTINCT lease_token) FROM backfill_jobs WHERE run_id = %s", [run_id]
        ).fetchone()[0]
    assert tokens == 40


def _migrate_in_process(url: str, out: Any) -> None:
    with db.connect(url, timeout=10) as conn:
        out.put(db.migrate(conn))


def test_migrations_racing_apply_each_migration_once(database_url):
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    migrators = [
        context.Process(target=_migrate_in_process, args=(database_url, out)) for _ in range(4)
    ]
    for process in migrators:
        process.start()
    applied = [out.get(timeout=60) for _ in migrators]
    for process in migrators:
        process.join(timeout=30)
    every = [version for version, _, _ in db.migration_files()]
    assert sorted(applied, key=len) == [[], [], [], every]
    with psycopg.connect(database_url) as conn:
        versions = [
            r[0] for r in conn.execute("SELECT version FROM civicband_migrations ORDER BY 1")
        ]
    assert versions == every


def test_resume_rules_of_the_queue(database_url, tmp_path):
    """SPEC §3: resume continues failed, paused or abandoned jobs; without it, new jobs start."""

    async def scenario() -> dict[str, Any]:
        store = await opened(database_url, tmp_path)
        try:
            run_id, _ = await queue(store, ["rules.ca"])
            agenda, minutes = sorted(
                await claim(store, run_id), key=lambda c: c.lease.document_type
            )
            await write_page(store, agenda.lease, None, "c1")
            await store.transact(lambda c: jobs.fail(c, agenda.lease, "HTTP 503"), "failing")
            await store.transact(lambda c: jobs.pause(c, [minutes.lease]), "pausing")
            for job_id in (agenda.lease.job_id, minutes.lease.job_id):
                await store.release(job_id)
            await store.leases.connection.close()  # this run's process is gone
            await store.close()
            store2 = await opened(database_url, tmp_path)
            run2, fresh = await queue(store2, ["rules.ca"])
            await store2.close()
            store3 = await opened(database_url, tmp_path)
            run3, resumed = await queue(store3, ["rules.ca"], resume=True)
            await store3.close()
            return {"fresh": fresh, "resumed": resumed, "runs": (run_id, run2, run3)}
        finally:
            await store.close()

    outcome = run(scenario())
    assert (outcome["fresh"].added, outcome["fresh"].reopened) == (2, 0)
    # The new jobs of the second run are still queued (pending, open): the third run, resuming,
    # finds them abandoned with no progress and takes them into its own queue.
    assert outcome["resumed"].reopened == 2
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT document_type, status, run_id FROM backfill_jobs ORDER BY id"
        ).fetchall()
    run1, _, run3 = outcome["runs"]
    assert rows == [
        ("agenda", "failed", run1),
        ("minutes", "paused", run1),
        ("agenda", "pending", run3),
        ("minutes", "pending", run3),
    ]


def test_a_run_is_joined_while_one_of_its_processes_lives(database_url, tmp_path):
    async def scenario() -> list[bool]:
        first = await opened(database_url, tmp_path)
        second = await opened(database_url, tmp_path)
        arguments = jobs.RunArguments(("a.ca",), ("agenda",), "default", False)
        joined = []
        try:
            for store in (first, second):
                run_id, was_joined = await store.transact(
                    lambda c, s=store: jobs.open_run(c, arguments, s.join_run), "opening"
                )
                joined.append((run_id, was_joined))
            await first.close()
            await second.close()
            third = await opened(database_url, tmp_path)
            try:
                joined.append(
                    await third.transact(
                        lambda c: jobs.open_run(c, arguments, third.join_run), "opening"
                    )
                )
            finally:
                await third.close()
            return joined
        finally:
            await first.close()
            await second.close()

    (run1, joined1), (run2, joined2), (run3, joined3) = run(scenario())
    assert (joined1, joined2, joined3) == (False, True, False)
    assert run1 == run2 != run3


def test_a_sweep_removes_what_the_pass_did_not_see_and_its_stale_rejections(database_url, tmp_path):
    # An earlier pass's page and rejection in the bucket of the page this pass sees (a1), a page
    # in a bucket the source has nothing in (00), and a rejection of the `~` bucket, which a
    # pass never proves gone (no id sums there).
    old_rows = clean_page(
        [
            {**ROW, "id": "000000000001"},
            {**ROW, "id": "a1ffffffffff"},
            {**ROW, "id": "a10000000001", "date": "bad"},
            {**ROW, "id": "x", "date": "bad"},
        ]
    )
    seen_rows = clean_page([ROW])
    source = {"a1": digest.Bucket(1, *digest.id_halves(ROW["id"]))}

    async def store_for(store: Store, lease: jobs.Lease, page: Any, remember: bool) -> None:
        await store.transact(
            lambda conn: mirror.store_rows(
                conn, lease.subdomain, lease.document_type, lease.job_id, page, remember=remember
            ),
            "storing",
        )

    async def scenario() -> tuple[tuple[int, int], tuple[int, int]]:
        store = await opened(database_url, tmp_path)
        try:
            run_id, _ = await queue(store, ["sweep.ca"])
            earlier = next(
                c for c in await claim(store, run_id) if c.lease.document_type == "agenda"
            )
            await store_for(store, earlier.lease, old_rows, False)  # an earlier pass's rows
            await store.transact(lambda c: jobs.fail(c, earlier.lease, "stopped"), "failing")
            await store.leases.connection.close()
            await store.close()
            store = await opened(database_url, tmp_path)
            run2, _ = await queue(store, ["sweep.ca"], mode="full")
            this = next(c for c in await claim(store, run2) if c.lease.document_type == "agenda")
            lease = this.lease
            await store_for(store, lease, seen_rows, True)

            async def sweep(conn: Any) -> tuple[tuple[int, int], tuple[int, int]]:
                site, kind = lease.subdomain, lease.document_type
                seen = await mirror.seen_digest(conn, site, kind, lease.job_id)
                whole = digest.seen_whole(source, seen)
                assert "a1" in whole and "00" in whole
                before = await mirror.sweep_preview(conn, site, kind, lease.job_id, whole)
                return before, await mirror.sweep(conn, site, kind, lease.job_id, whole)

            return await store.transact(sweep, "sweeping")
        finally:
            await store.close()

    before, removed = run(scenario())
    assert before == (3, 2)  # three pages here; a sweep removes the two this pass did not see
    assert removed == (2, 1)  # and the hex rejection it did not meet again
    with psycopg.connect(database_url) as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM meeting_pages")]
        rejected = [r[0] for r in conn.execute("SELECT row_id FROM rejected_rows")]
    assert (ids, rejected) == ([ROW["id"]], ["x"])


def store_pages(url: str, tmp_path: Path, site: str, pages: list[Any]) -> list[mirror.Stored]:
    """Store these pages in turn for one agenda job, each in its own transaction."""

    async def scenario() -> list[mirror.Stored]:
        store = await opened(url, tmp_path)
        try:
            run_id, _ = await queue(store, [site])
            claims = await claim(store, run_id)
            lease = next(c.lease for c in claims if c.lease.document_type == "agenda")
            return [
                await store.transact(
                    lambda conn, page=page: mirror.store_rows(
                        conn, site, "agenda", lease.job_id, page, remember=False
                    ),
                    "storing",
                )
                for page in pages
            ]
        finally:
            await store.close()

    return run(scenario())


def digest_total(url: str, tmp_path: Path, site: str) -> int:
    """How many source rows the mirror's digest of a site's agendas says it holds."""

    async def scenario() -> int:
        store = await opened(url, tmp_path)
        try:
            found = await store.transact(
                lambda conn: mirror.local_digest(conn, site, "agenda"), "digesting"
            )
        finally:
            await store.close()
        return sum(bucket.n for bucket in found.values())

    return run(scenario())


def test_a_page_holding_an_id_twice_keeps_the_row_it_stores(database_url, tmp_path):
    twin = {**ROW, "text": "Call to order, again"}  # the same id twice: the second is rejected
    page = clean_page([ROW, twin])
    # The same page twice: the second changes nothing.
    first, second = store_pages(database_url, tmp_path, "twice.ca", [page, page])
    assert (first.created, first.unrejected, first.dropped) == (1, 0, 0)
    assert (second.created, second.updated, second.unrejected, second.dropped) == (0, 1, 0, 0)
    with psycopg.connect(database_url) as conn:
        texts = [r[0] for r in conn.execute("SELECT text FROM meeting_pages")]
        rejected = conn.execute("SELECT row_id, reason FROM rejected_rows").fetchall()
    assert texts == [ROW["text"]]
    assert rejected == [(ROW["id"], DUPLICATE_ID)]
    assert digest_total(database_url, tmp_path, "twice.ca") == 2  # the source's two rows


def test_an_invalid_id_that_reads_as_a_valid_one_once_cut_touches_neither(database_url, tmp_path):
    valid = {**ROW, "id": "v" * MAX_ID_LENGTH}
    invalid = {**ROW, "id": valid["id"] + "w", "text": "another page"}  # shown cut: as valid
    pages = [clean_page([valid]), clean_page([invalid]), clean_page([valid])]
    stored = store_pages(database_url, tmp_path, "cut.ca", pages)
    assert [(s.created, s.dropped, s.unrejected) for s in stored] == [
        (1, 0, 0),
        (0, 0, 0),
        (0, 0, 0),
    ]
    with psycopg.connect(database_url) as conn:
        ids = [r[0] for r in conn.execute("SELECT id FROM meeting_pages")]
        rejected = conn.execute("SELECT row_id, reason FROM rejected_rows").fetchall()
    assert ids == [valid["id"]]
    assert rejected == [(valid["id"], INVALID_ID)]
    assert digest_total(database_url, tmp_path, "cut.ca") == 2


def cut_lease_connection(url: str, store: Store) -> None:
    """Terminate a store's lease connection and wait until its backend, and its locks, are gone."""
    assert store.leases.connection is not None
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT pg_terminate_backend(%s, 10000)", [store.leases.connection.info.backend_pid]
        ).fetchone()
    assert row == (True,)


class Interleaved:
    """A connection on which `meanwhile` runs once, after enqueue observed the jobs and before
    it decides about them: what another process can do in between."""

    def __init__(self, conn: Any, meanwhile: Any) -> None:
        self.conn = conn
        self.meanwhile = meanwhile

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        return self.conn.cursor(*args, **kwargs)

    async def execute(self, *args: Any, **kwargs: Any) -> Any:
        if self.meanwhile is not None:
            meanwhile, self.meanwhile = self.meanwhile, None
            await meanwhile()
        return await self.conn.execute(*args, **kwargs)


async def queue_agenda(
    store: Store, mode: str, *, resume: bool = False, meanwhile: Any = None
) -> tuple[int, jobs.Queued]:
    """Open or join the run of fenced.ca's agendas in `mode` and queue it."""
    arguments = jobs.RunArguments(("fenced.ca",), ("agenda",), mode, False)

    async def work(conn: Any) -> tuple[int, jobs.Queued]:
        await jobs.add_municipality(conn, "fenced.ca")
        run_id, _ = await jobs.open_run(conn, arguments, store.join_run)
        queued = await jobs.enqueue(
            Interleaved(conn, meanwhile),
            run_id,
            [("fenced.ca", "agenda")],
            mode=mode,
            resume=resume,
        )
        return run_id, queued

    return await store.transact(work, "queueing")


@pytest.mark.parametrize("resume", [False, True], ids=["fail_abandoned", "reopen_jobs"])
@pytest.mark.parametrize("meanwhile", ["claimed", "lease taken back"])
def test_a_decision_about_an_abandoned_job_changes_nothing_if_it_moved_since(
    database_url, tmp_path, resume, meanwhile
):
    """Another run judged the job abandoned; before it acts, a process of the job's own run
    claims it (a new token), or its holder reconnects and takes its lease back."""

    async def scenario() -> tuple[jobs.Queued, int, int]:
        holder = await opened(database_url, tmp_path)
        sibling = await opened(database_url, tmp_path)  # a live process of the same run
        decider = await opened(database_url, tmp_path)
        try:
            run_id, _ = await queue_agenda(holder, "default")
            await queue_agenda(sibling, "default")
            (first,) = await claim(holder, run_id)
            assert await write_page(holder, first.lease, None, "c1")
            cut_lease_connection(database_url, holder)  # the job looks abandoned now
            token = first.lease.token

            async def claimed() -> None:
                nonlocal token
                (taken,) = await claim(sibling, run_id)
                token = taken.lease.token
                await sibling.release(taken.lease.job_id)  # only the token tells now

            async def taken_back() -> None:
                await holder.leases.renew()

            act = claimed if meanwhile == "claimed" else taken_back
            _, queued = await queue_agenda(decider, "full", resume=resume, meanwhile=act)
            return queued, first.lease.job_id, token
        finally:
            for store in (holder, sibling, decider):
                await store.close()

    queued, job_id, token = run(scenario())
    assert (queued.abandoned, queued.reopened, queued.added) == (0, 0, 0)
    assert queued.skipped == [("fenced.ca", "agenda", job_id)]
    job = row_of(database_url, job_id)
    assert (job["status"], job["lease_token"], job["last_cursor"]) == ("running", token, "c1")
    with psycopg.connect(database_url) as conn:
        (count,) = conn.execute("SELECT count(*) FROM backfill_jobs").fetchone() or (0,)
    assert count == 1


def test_a_renewed_lease_whose_job_was_claimed_meanwhile_is_reported_moved(database_url, tmp_path):
    """The holder's lock comes back, but its job is another process's now: its token says so."""

    async def scenario() -> tuple[list[dict[str, Any]], list[int], list[int], int, int]:
        renewals: list[dict[str, Any]] = []
        holder = await opened(database_url, tmp_path)
        holder.leases.signals = SignalManager()

        def renewed(lost: list[int], kept: list[int]) -> None:
            renewals.append({"lost": lost, "kept": kept})

        holder.leases.signals.connect(
            renewed, signal=civicband_signals.leases_renewed
        )  # held weakly
        sibling = await opened(database_url, tmp_path)
        try:
            run_id, _ = await queue_agenda(holder, "default")
            await queue_agenda(sibling, "default")
            (mine,) = await claim(holder, run_id)
            cut_lease_connection(database_url, holder)
            (second,) = await claim(sibling, run_id)  # taken over, then let go
            await sibling.release(second.lease.job_id)
            await holder.leases.renew()
            moved = await holder.transact(
                lambda conn: jobs.moved_leases(conn, [mine.lease]), "checking"
            )
            ours = await sibling.transact(
                lambda conn: jobs.moved_leases(conn, [second.lease]), "checking"
            )
            return renewals, moved, ours, mine.lease.job_id, len(holder.leases.leased)
        finally:
            await holder.close()
            await sibling.close()

    renewals, moved, ours, job_id, leased = run(scenario())
    assert renewals == [{"lost": [], "kept": [job_id]}]  # the lock came back...
    assert leased == 1
    assert moved == [job_id]  # ...but the token is the sibling's: the registry stops the job
    assert ours == []
