"""Rounds (civicband/rounds.py): a site's jobs meet so that each round's questions go out together.

A fake Reads records each call and answers only when the test says so; the event loop is
driven by yielding to it (asyncio.sleep(0)), never by waiting for time to pass.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from civicband.bisect import LIST_DEPTH, Answer, Ask
from civicband.datasette import Interrupted, SourceError
from civicband.digest import Bucket
from civicband.reads import Fetched
from civicband.rounds import Rounds

SITE = "site"


class FakeReads:
    """Records calls; each call waits for `release` (set at once unless `held`)."""

    def __init__(self, *, held: bool = False, error: Exception | None = None) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.release = asyncio.Event()
        if not held:
            self.release.set()
        self.error = error
        self.cancelled: list[str] = []

    async def _wait(self, kind: str) -> None:
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.append(kind)
            raise
        if self.error is not None:
            raise self.error

    async def digests(self, subdomain, sizes):
        self.calls.append(("digests", (subdomain, list(sizes), sum(sizes.values()))))
        await self._wait("digests")
        return {t: {"ab": Bucket(len(t), 1, 2, 3)} for t in sizes}

    async def bisect(self, subdomain, asks, rows):
        self.calls.append(("bisect", (subdomain, dict(asks), dict(rows))))
        await self._wait("bisect")
        return {t: Answer({t: Bucket(1)}, {}) for t in asks}

    async def fetch(self, subdomain, wanted):
        self.calls.append(("fetch", (subdomain, dict(wanted))))
        for (kind, whole), ids in wanted.items():
            await self._wait("fetch")
            yield Fetched(kind, [{"id": i} for i in ids], whole, True)


async def settle(turns: int = 10) -> None:
    """Let every ready task run (no time passes)."""
    for _ in range(turns):
        await asyncio.sleep(0)


async def collect(iterator):
    return [item async for item in iterator]


def run(coroutine):
    return asyncio.run(coroutine)


def test_two_members_digests_are_one_call():
    async def main():
        reads = FakeReads()
        rounds = Rounds(reads)
        rounds.join(SITE, "agenda")
        rounds.join(SITE, "minutes")
        got = await asyncio.gather(
            rounds.digest(SITE, "agenda", 10), rounds.digest(SITE, "minutes", 20)
        )
        return reads, got

    reads, (agenda, minutes) = run(main())
    assert reads.calls == [("digests", (SITE, ["agenda", "minutes"], 30))]
    assert agenda == {"ab": Bucket(6, 1, 2, 3)}  # each its own table's
    assert minutes == {"ab": Bucket(7, 1, 2, 3)}


def test_a_question_waits_for_the_other_member_and_goes_when_it_leaves():
    async def main():
        reads = FakeReads()
        rounds = Rounds(reads)
        rounds.join(SITE, "agenda")
        rounds.join(SITE, "minutes")
        asking = asyncio.ensure_future(rounds.digest(SITE, "agenda", 10))
        await settle()
        waited = (list(reads.calls), asking.done())
        rounds.leave(SITE, "minutes")
        return waited, await asking, reads.calls

    (calls_before, done_before), got, calls = run(main())
    assert (calls_before, done_before) == ([], False)
    assert got == {"ab": Bucket(6, 1, 2, 3)}
    assert calls == [("digests", (SITE, ["agenda"], 10))]


def test_a_lone_member_asks_at_once():
    async def main():
        reads = FakeReads()
        rounds = Rounds(reads)
        with rounds.member(SITE, "minutes"):
            return await rounds.digest(SITE, "minutes", 5), reads.calls

    got, calls = run(main())
    assert got == {"ab": Bucket(7, 1, 2, 3)}
    assert calls == [("digests", (SITE, ["minutes"], 5))]


def test_other_sites_do_not_wait_for_each_other():
    async def main():
        reads = FakeReads()
        rounds = Rounds(reads)
        rounds.join("one", "agenda")
        rounds.join("one", "minutes")
        rounds.join("two", "agenda")
        waiting = asyncio.ensure_future(rounds.digest("one", "agenda", 1))
        got = await rounds.digest("two", "agenda", 2)
        await settle()
        assert not waiting.done()
        waiting.cancel()
        return got, reads.calls

    got, calls = run(main())
    assert got == {"ab": Bucket(6, 1, 2, 3)}
    assert calls == [("digests", ("two", ["agenda"], 2))]


def test_a_bisection_goes_before_a_pending_fetch_which_waits_for_the_other_member():
    ask = Ask(LIST_DEPTH, ("ab",))

    async def main():
        reads = FakeReads()
        rounds = Rounds(reads)
        rounds.join(SITE, "agenda")
        rounds.join(SITE, "minutes")
        agenda = asyncio.ensure_future(collect(rounds.fetch(SITE, "agenda", ["a1"], ["a2"])))
        await settle()
        assert reads.calls == []  # minutes has not asked yet
        answer = await rounds.bisect(SITE, "minutes", ask, {"ab": 3})
        await settle()
        # The bisection went alone; the fetch still waits for minutes' fetch.
        assert [c[0] for c in reads.calls] == ["bisect"]
        assert not agenda.done()
        minutes = await collect(rounds.fetch(SITE, "minutes", ["m1"], []))
        return reads.calls, answer, await agenda, minutes

    calls, answer, agenda, minutes = run(main())
    assert calls == [
        ("bisect", (SITE, {"minutes": ask}, {"minutes": {"ab": 3}})),
        (
            "fetch",
            (
                SITE,
                {("agenda", True): ["a1"], ("agenda", False): ["a2"], ("minutes", True): ["m1"]},
            ),
        ),
    ]
    assert answer.digests == {"minutes": Bucket(1)}
    assert [(f.document_type, f.whole, f.rows) for f in agenda] == [
        ("agenda", True, [{"id": "a1"}]),
        ("agenda", False, [{"id": "a2"}]),
    ]
    assert [(f.document_type, f.whole, f.rows) for f in minutes] == [
        ("minutes", True, [{"id": "m1"}])
    ]


def test_both_bisections_of_a_round_are_one_call():
    async def main():
        reads = FakeReads()
        rounds = Rounds(reads)
        rounds.join(SITE, "agenda")
        rounds.join(SITE, "minutes")
        a, m = Ask(4, ("ab",)), Ask(LIST_DEPTH, ("cd",))
        got = await asyncio.gather(
            rounds.bisect(SITE, "agenda", a, {"ab": 1}),
            rounds.bisect(SITE, "minutes", m, {"cd": 2}),
        )
        return reads.calls, got, a, m

    calls, (agenda, minutes), a, m = run(main())
    assert calls == [
        ("bisect", (SITE, {"agenda": a, "minutes": m}, {"agenda": {"ab": 1}, "minutes": {"cd": 2}}))
    ]
    assert agenda.digests == {"agenda": Bucket(1)}
    assert minutes.digests == {"minutes": Bucket(1)}


def test_an_error_in_the_call_reaches_every_asker():
    async def main():
        reads = FakeReads(error=SourceError("the site is down", retryable=False))
        rounds = Rounds(reads)
        rounds.join(SITE, "agenda")
        rounds.join(SITE, "minutes")
        return await asyncio.gather(
            rounds.digest(SITE, "agenda", 1),
            rounds.digest(SITE, "minutes", 1),
            return_exceptions=True,
        ), reads.calls

    got, calls = run(main())
    assert len(calls) == 1
    assert [str(e) for e in got] == ["the site is down", "the site is down"]
    assert all(isinstance(e, SourceError) for e in got)


def test_an_error_while_fetching_reaches_every_fetcher():
    async def main():
        reads = FakeReads(error=SourceError("cut short", retryable=False))
        rounds = Rounds(reads)
        rounds.join(SITE, "agenda")
        rounds.join(SITE, "minutes")
        return await asyncio.gather(
            collect(rounds.fetch(SITE, "agenda", ["a"], [])),
            collect(rounds.fetch(SITE, "minutes", [], ["m"])),
            return_exceptions=True,
        )

    got = run(main())
    assert [str(e) for e in got] == ["cut short", "cut short"]


def test_asking_without_joining_is_an_error():
    async def main():
        rounds = Rounds(FakeReads())
        with pytest.raises(RuntimeError, match="without having joined"):
            await rounds.digest(SITE, "agenda", 1)
        rounds.join(SITE, "minutes")
        with pytest.raises(RuntimeError, match="site/agenda asks without having joined"):
            await rounds.digest(SITE, "agenda", 1)
        rounds.leave(SITE, "minutes")
        with pytest.raises(RuntimeError, match="without having joined"):
            await rounds.digest(SITE, "minutes", 1)

    run(main())


def test_leaving_twice_or_without_joining_is_harmless():
    rounds = Rounds(FakeReads())
    rounds.leave(SITE, "agenda")
    rounds.join(SITE, "agenda")
    rounds.leave(SITE, "agenda")
    rounds.leave(SITE, "agenda")
    assert rounds._sites == {}


def test_when_the_last_member_leaves_running_sends_are_cancelled():
    async def main():
        reads = FakeReads(held=True)  # the call never answers
        rounds = Rounds(reads)
        rounds.join(SITE, "agenda")
        rounds.join(SITE, "minutes")
        askers = [
            asyncio.ensure_future(rounds.digest(SITE, "agenda", 1)),
            asyncio.ensure_future(rounds.digest(SITE, "minutes", 1)),
        ]
        await settle()
        assert [c[0] for c in reads.calls] == ["digests"]  # sent, and waiting
        rounds.leave(SITE, "agenda")
        await settle()
        assert reads.cancelled == []  # one member is still there
        rounds.leave(SITE, "minutes")
        await settle()
        return reads, askers, rounds

    reads, askers, rounds = run(main())
    assert reads.cancelled == ["digests"]
    assert all(a.cancelled() for a in askers)
    assert rounds._sites == {}


def test_the_member_context_leaves_however_the_catch_up_ends():
    async def main():
        reads = FakeReads()
        rounds = Rounds(reads)
        rounds.join(SITE, "agenda")
        with pytest.raises(ValueError, match="boom"), rounds.member(SITE, "minutes"):
            raise ValueError("boom")
        # minutes left: agenda asks alone.
        return await rounds.digest(SITE, "agenda", 1), reads.calls

    _, calls = run(main())
    assert calls == [("digests", (SITE, ["agenda"], 1))]


def test_a_pending_fetch_goes_alone_when_the_other_member_leaves_after_its_bisection():
    async def main():
        reads = FakeReads()
        rounds = Rounds(reads)
        rounds.join(SITE, "agenda")
        rounds.join(SITE, "minutes")
        agenda = asyncio.ensure_future(collect(rounds.fetch(SITE, "agenda", ["a1"], [])))
        await rounds.bisect(SITE, "minutes", Ask(LIST_DEPTH, ("ab",)), {"ab": 1})
        await settle()
        assert not agenda.done()
        rounds.leave(SITE, "minutes")  # nothing changed in minutes: it fetches nothing
        return await agenda, [c[0] for c in reads.calls], reads.calls[-1]

    fetched, kinds, last = run(main())
    assert kinds == ["bisect", "fetch"]
    assert last == ("fetch", (SITE, {("agenda", True): ["a1"]}))
    assert [f.rows for f in fetched] == [[{"id": "a1"}]]


def test_a_bisection_error_of_one_table_reaches_that_table_only():
    class OneTableFails(FakeReads):
        async def bisect(self, subdomain, asks, rows):
            answers = await super().bisect(subdomain, asks, rows)
            return {**answers, "agenda": Interrupted("agendas' bucket is too slow")}

    async def main():
        reads = OneTableFails()
        rounds = Rounds(reads)
        rounds.join(SITE, "agenda")
        rounds.join(SITE, "minutes")
        return await asyncio.gather(
            rounds.bisect(SITE, "agenda", Ask(12, ("ab",)), {}),
            rounds.bisect(SITE, "minutes", Ask(12, ("cd",)), {}),
            return_exceptions=True,
        )

    agenda, minutes = run(main())
    assert isinstance(agenda, Interrupted)
    assert minutes == Answer({"minutes": Bucket(1)}, {})
