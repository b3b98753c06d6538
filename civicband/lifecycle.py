"""One job's life in this process, as a state machine: its fields change only through it.

    claimed ──> fetching (a full pass) ──┐
       │            ^                    ├──> verifying ──> ended
       └──> catching up ─────────────────┘
                (restart_full: a catch-up that costs more than a full pass becomes one)

The Registry drives the moves; the spider, the gate and the pipeline call the paging methods
(`admit`, `answered`, `parsed`, `stored`); nothing assigns to a job from outside.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from civicband import jobs

if TYPE_CHECKING:
    from civicband.digest import Digest
    from civicband.exact import Exact

CLAIMED, FETCHING, CATCHING_UP, VERIFYING, ENDED = (
    "claimed",
    "fetching",
    "catching up",
    "verifying",
    "ended",
)
_MOVES = {
    CLAIMED: {FETCHING, CATCHING_UP, VERIFYING, ENDED},
    FETCHING: {VERIFYING, ENDED},
    CATCHING_UP: {FETCHING, VERIFYING, ENDED},
    VERIFYING: {ENDED},
    ENDED: set(),
}


@dataclass(frozen=True)
class Exhausted:
    """A step's outcome: nothing more to fetch; verify, against what the step already took."""

    digest: Digest | None = None  # the source's digest a catch-up took (None: take one)
    exact: Exact | None = None  # the exact comparison, when nothing changed since it was taken


@dataclass(frozen=True)
class Restart:
    """A step's outcome: fetching what differs would cost more requests than a full pass."""

    fetch: int


@dataclass(frozen=True)
class Failed:
    """A step's outcome: the job cannot go on (the source cannot answer, the guard holds)."""

    message: str


# Times one job's next page is asked again when the crawl went idle without it (a lost request).
MAX_REISSUES = 3


class ActiveJob:
    """One job this process holds: what it fetches next, and how far it got."""

    def __init__(self, claim: jobs.Claim, run_id: int, options: dict[str, bool]) -> None:
        self._lease = claim.lease
        self._mode = claim.mode
        self._run_id = run_id
        self._options = options  # allow_shrink, repair, exact: what the run asked for
        self._exhausted = claim.exhausted  # only verification was left when it was claimed
        self._state = CLAIMED
        self._cursor = claim.cursor  # the page a full pass fetches next
        self._inflight = False  # its next page is being downloaded
        self._last_id: str | None = None  # the highest id of the last page parsed
        self._reissued = 0
        self._write_lock = asyncio.Lock()
        self.tasks: set[asyncio.Task] = set()  # its running steps, for the Registry to cancel
        # progress: rows received by this job (earlier attempts included) and the source's count
        self._rows_done = self._rows_at_claim = claim.pages_fetched
        self._rows_expected: int | None = None
        self._claimed_at = time.monotonic()
        self._waiting: str | None = None  # "rate limited" or "backing off" while it waits
        # a catch-up's requests: those the cost model still expects, and those made so far
        self._requests_left: float | None = None
        self._requests_made = 0

    # ---- what it is -----------------------------------------------------------------------

    lease = property(lambda self: self._lease, doc="Its lease: every write names the token.")
    job_id = property(lambda self: self._lease.job_id, doc="Its id in backfill_jobs.")
    subdomain = property(lambda self: self._lease.subdomain, doc="The site.")
    document_type = property(lambda self: self._lease.document_type, doc="agenda or minutes.")
    mode = property(lambda self: self._mode, doc="full, catchup or verify (as it runs now).")
    run_id = property(lambda self: self._run_id, doc="The run it was claimed in.")
    allow_shrink = property(lambda self: self._options["allow_shrink"], doc="-a allow_shrink.")
    repair = property(lambda self: self._options["repair"], doc="Never becomes a full pass.")
    exact = property(lambda self: self._options["exact"], doc="Judged by every value.")
    state = property(lambda self: self._state, doc="Where it is in its life.")
    cursor = property(lambda self: self._cursor, doc="The page or catch-up batch it is at.")
    inflight = property(lambda self: self._inflight, doc="Its next page is on its way.")
    stopped = property(lambda self: self._state == ENDED, doc="It left this process.")
    write_lock = property(lambda self: self._write_lock, doc="Its writes go one at a time.")
    rows_done = property(lambda self: self._rows_done, doc="Rows received, all attempts.")
    rows_at_claim = property(lambda self: self._rows_at_claim, doc="Rows done when claimed.")
    rows_expected = property(lambda self: self._rows_expected, doc="What the source holds.")
    claimed_at = property(lambda self: self._claimed_at, doc="When this process claimed it.")
    waiting = property(lambda self: self._waiting, doc="Why its request waits, if it does.")
    requests_left = property(lambda self: self._requests_left, doc="A catch-up's, predicted.")
    requests_made = property(lambda self: self._requests_made, doc="A catch-up's, so far.")

    def __str__(self) -> str:
        return f"Job {self.job_id} {self.subdomain}/{self.document_type}"

    # ---- moves (the Registry's) -----------------------------------------------------------

    def move(self, state: str) -> bool:
        """Go to `state` if its life allows it from here; False (and no change) otherwise."""
        if state not in _MOVES[self._state]:
            return False
        self._state = state
        return True

    def first_step(self) -> str:
        """Where a claimed job goes: verification alone, a catch-up, or paging."""
        if self._exhausted or self._mode == jobs.VERIFY:
            return VERIFYING
        return CATCHING_UP if self._mode == jobs.CATCHUP else FETCHING

    def restart_full(self) -> bool:
        """A catch-up that would cost more than a full pass becomes one, from the first page."""
        if not self.move(FETCHING):
            return False
        self._mode, self._cursor, self._last_id, self._inflight = jobs.FULL, None, None, False
        return True

    # ---- paging (the spider, the gate, the pipeline) --------------------------------------

    def admit(self, cursor: Any, *, retry: bool) -> str | None:
        """Why a page request must not be fetched now, or None (it is then on its way)."""
        if self._state != FETCHING or self._mode != jobs.FULL:
            return "not paging"
        if cursor != self._cursor:
            return "not its next page"
        if self._inflight and not retry:
            return "already being fetched"
        self._inflight = True
        return None

    def answered(self, cursor: Any) -> bool:
        """An answer for the page it waits for arrived (False: a stale answer, not its own)."""
        if self._state != FETCHING or cursor != self._cursor:
            return False
        self._inflight = False
        return True

    def refetching(self) -> None:
        """The same page is asked again (a retried bad answer)."""
        self._inflight = True

    def parsed(self, cursor: str | None, next_cursor: str | None, rows: list[Any]) -> str:
        """Why a parsed page does not move the job forward (SPEC §3), or '' and it moves on."""
        ids = [r["id"] for r in rows if isinstance(r, dict) and isinstance(r.get("id"), str)]
        if next_cursor is not None and next_cursor == cursor:
            return f"`next` does not advance ({next_cursor!r} again)"
        if next_cursor is not None and not rows:
            # Datasette's `next` is the last row's key: a page without rows has none to give.
            return f"a page without rows says more follow (`next` {next_cursor!r})"
        if next_cursor is not None and not ids and cursor is not None:
            # NULL ids sort first, so only a first page may hold nothing else: past it, a page
            # with no id to advance by, and a `next`, would never end.
            return f"a page without ids says more follow (`next` {next_cursor!r})"
        if ids and self._last_id is not None and min(ids) <= self._last_id:
            return f"ids do not increase ({min(ids)!r} after {self._last_id!r})"
        if ids:
            self._last_id = max(ids)
        self._cursor = next_cursor
        return ""

    def stalled(self) -> bool:
        """Paging, yet nothing of it is queued, downloading or being stored."""
        return (
            self._state == FETCHING
            and not self._inflight
            and not self.tasks
            and not self._write_lock.locked()
        )

    def reissue(self) -> bool:
        """Count one more request for its next page; False once MAX_REISSUES are used up."""
        if self._reissued >= MAX_REISSUES:
            return False
        self._reissued += 1
        return True

    def stored(self, rows: int, cursor_out: str | None = None, *, batch: bool = False) -> None:
        """Rows of it were committed; a catch-up batch moves its cursor to `cursor_out`."""
        self._rows_done += rows
        if batch:
            self._cursor = cursor_out

    def expect(self, rows: int | None) -> None:
        """What the source holds, or what a catch-up fetches, for progress."""
        self._rows_expected = rows

    def plan_requests(self, requests: float) -> None:
        """The requests the cost model expects the rest of a catch-up to take (its ETA)."""
        self._requests_left = requests

    def requested(self, requests: int = 1) -> None:
        """A catch-up made requests: fewer are left."""
        self._requests_made += requests
        if self._requests_left is not None:
            self._requests_left = max(self._requests_left - requests, 0.0)

    def wait(self, why: str | None) -> None:
        """Its request waits out a backoff or a rate limit (None: it does not any more)."""
        self._waiting = why
