"""Both tables of a site catching up at once ask each round's questions in the same answers.

A site's agendas and minutes are two jobs, each with its own lease; their catch-ups run side by
side. Each round (the digests, a round of bisection, the fetch) a job puts its question here
and waits; once every job of the site that is catching up in this process has asked, or left,
the questions go out together (civicband/reads.py puts both tables in one SQL answer): so an
unchanged site costs one request, not two. Of questions of different kinds, the earliest go
first and the later wait for the others to reach them. A job that leaves (done, failed,
stopped) never holds the others up.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from civicband.bisect import Answer, Ask
from civicband.digest import Digest
from civicband.reads import Fetched, Reads


@dataclass(frozen=True)
class DigestQuestion:
    """The table's digest; `rows` is how many the mirror holds (to split a large one)."""

    rows: int


@dataclass(frozen=True)
class BisectQuestion:
    """Buckets at one depth, with the source's rows in each."""

    ask: Ask
    rows: Mapping[str, int]


@dataclass(frozen=True)
class FetchQuestion:
    """Ids to fetch whole, and ids to fetch for their values only."""

    whole: list[str]
    values: list[str]


Question = DigestQuestion | BisectQuestion | FetchQuestion
_STAGES = (DigestQuestion, BisectQuestion, FetchQuestion)  # the order a catch-up asks them in
_END = object()  # the end of a fetch's answers


@dataclass
class _Site:
    """The jobs of one site catching up here, and the questions they have put this round."""

    members: set[str] = field(default_factory=set)
    asked: dict[str, tuple[Question, asyncio.Future]] = field(default_factory=dict)
    running: set[asyncio.Task] = field(default_factory=set)


class Rounds:
    """Where a site's catching-up jobs meet to ask together."""

    def __init__(self, reads: Reads) -> None:
        self.reads = reads
        self._sites: dict[str, _Site] = {}

    def join(self, subdomain: str, document_type: str) -> None:
        """A job of this site starts catching up: its questions are awaited with the others'."""
        self._sites.setdefault(subdomain, _Site()).members.add(document_type)

    def leave(self, subdomain: str, document_type: str) -> None:
        """The job asks nothing more: the others no longer wait for it."""
        site = self._sites.get(subdomain)
        if site is None:
            return
        site.members.discard(document_type)
        site.asked.pop(document_type, None)
        if not site.members:
            for task in site.running:
                task.cancel()
            del self._sites[subdomain]
            return
        self._go(subdomain, site)

    @contextlib.contextmanager
    def member(self, subdomain: str, document_type: str) -> Any:
        """Join for the length of a catch-up, and leave however it ends."""
        self.join(subdomain, document_type)
        try:
            yield self
        finally:
            self.leave(subdomain, document_type)

    async def digest(self, subdomain: str, document_type: str, rows: int) -> Digest:
        """The source's digest of this table, asked with the site's other table."""
        return await self._ask(subdomain, document_type, DigestQuestion(rows))

    async def bisect(
        self, subdomain: str, document_type: str, ask: Ask, rows: Mapping[str, int]
    ) -> Answer:
        """Sub-bucket digests or listings of these buckets, asked with the other table's."""
        return await self._ask(subdomain, document_type, BisectQuestion(ask, rows))

    async def fetch(
        self, subdomain: str, document_type: str, whole: list[str], values: list[str]
    ) -> AsyncIterator[Fetched]:
        """Rows by id, answer by answer, fetched with the other table's."""
        queue: asyncio.Queue = await self._ask(
            subdomain, document_type, FetchQuestion(whole, values)
        )
        while (item := await queue.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item

    async def _ask(self, subdomain: str, document_type: str, question: Question) -> Any:
        site = self._sites.get(subdomain)
        if site is None or document_type not in site.members:
            raise RuntimeError(f"{subdomain}/{document_type} asks without having joined")
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        site.asked[document_type] = (question, future)
        self._go(subdomain, site)
        return await future

    def _go(self, subdomain: str, site: _Site) -> None:
        """Once every member has asked, send the questions of the earliest kind together;
        the others wait for the rest to catch up (a fetch waits for the other table's listing,
        so that both tables' rows come in the same answers)."""
        if not site.asked or set(site.asked) < site.members:
            return
        earliest = min(_STAGES.index(type(q)) for q, _ in site.asked.values())
        going = {t: a for t, a in site.asked.items() if _STAGES.index(type(a[0])) == earliest}
        for table in going:
            del site.asked[table]
        task = asyncio.ensure_future(self._send(subdomain, going))
        site.running.add(task)
        task.add_done_callback(site.running.discard)

    async def _send(
        self, subdomain: str, asked: dict[str, tuple[Question, asyncio.Future]]
    ) -> None:
        try:
            await self._send_kind(subdomain, asked)
        except asyncio.CancelledError:  # every member left
            for _, future in asked.values():
                future.cancel()
            raise
        except Exception as error:  # noqa: BLE001 - every asker raises it
            for _, future in asked.values():
                if not future.done():
                    future.set_exception(error)

    async def _send_kind(
        self, subdomain: str, asked: dict[str, tuple[Question, asyncio.Future]]
    ) -> None:
        questions = {t: q for t, (q, _) in asked.items()}
        futures = {t: f for t, (_, f) in asked.items()}
        first = next(iter(questions.values()))
        if isinstance(first, DigestQuestion):
            sizes = {t: q.rows for t, q in sorted(questions.items())}  # type: ignore[union-attr]
            digests = await self.reads.digests(subdomain, sizes)
            for table, future in futures.items():
                if not future.done():
                    future.set_result(digests[table])
        elif isinstance(first, BisectQuestion):
            answers = await self.reads.bisect(
                subdomain,
                {t: q.ask for t, q in questions.items()},  # type: ignore[union-attr]
                {t: q.rows for t, q in questions.items()},  # type: ignore[union-attr]
            )
            for table, future in futures.items():
                if future.done():
                    continue
                if isinstance(answers[table], Exception):  # that table's alone
                    future.set_exception(answers[table])
                else:
                    future.set_result(answers[table])
        else:
            await self._fetch(subdomain, questions, futures)  # type: ignore[arg-type]

    async def _fetch(
        self,
        subdomain: str,
        questions: dict[str, FetchQuestion],
        futures: dict[str, asyncio.Future],
    ) -> None:
        queues = {t: asyncio.Queue() for t in questions}
        for table, future in futures.items():
            if not future.done():
                future.set_result(queues[table])
        wanted = {}
        for table, question in questions.items():
            if question.whole:
                wanted[table, True] = question.whole
            if question.values:
                wanted[table, False] = question.values
        try:
            async for fetched in self.reads.fetch(subdomain, wanted):
                queues[fetched.document_type].put_nowait(fetched)
        except Exception as error:  # noqa: BLE001 - each asker raises it from its queue
            for queue in queues.values():
                queue.put_nowait(error)
            return
        for queue in queues.values():
            queue.put_nowait(_END)
