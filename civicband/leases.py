"""This process's leases: one connection holding every job's and run's advisory lock.

`Leases` is the one owner of the lease set: it takes and gives back job leases, joins runs,
keeps the connection used so that a cut is seen within seconds, and after a cut takes every
lock again, telling the registry which jobs another process holds now.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from typing import Any

import psycopg
from scrapy.signalmanager import SignalManager
from scrapy.statscollectors import StatsCollector

from civicband import db
from civicband import signals as civicband_signals

logger = logging.getLogger(__name__)

LEASE_CLASS = 0x63626A62  # "cbjb": the first key of every job's advisory lock
RUN_CLASS = 0x6362726E  # "cbrn": the first key of every run's shared advisory lock
# libpq's TCP keepalives on the lease connection, so that an idle lease stays known to NATs and
# firewalls, and a peer that vanished is seen after 10 + 5 * 3 = 25 s of silence; data left
# unacknowledged for 25 s ends the connection too (TCP_USER_TIMEOUT, where the system has it).
LEASE_KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 25_000,
}


def application_name(role: str) -> str:
    """Who holds a connection, as pg_stat_activity shows it: the crawl's host and process."""
    return f"civicband {role} {socket.gethostname()}:{os.getpid()}"[:63]


class Leases:
    """The lease connection and the job leases and run locks it holds (session advisory locks)."""

    def __init__(
        self,
        *,
        timeout: float,
        check_interval: float,
        stats: StatsCollector | None = None,
        signals: SignalManager | None = None,
    ) -> None:
        self.timeout = timeout
        self.check_interval = check_interval
        self.stats = stats
        self.signals = signals
        self.url: str | None = None
        self.connection: psycopg.AsyncConnection | None = None
        self.leased: set[int] = set()
        self.runs: set[int] = set()
        self._leasing = asyncio.Lock()
        self._checking: asyncio.Task | None = None

    async def open(self, url: str) -> None:
        """Connect, and keep the connection used every CIVICBAND_LEASE_CHECK_INTERVAL."""
        self.url = url
        await self._connect()
        self._checking = asyncio.ensure_future(self._check())

    async def close(self) -> None:
        """Stop checking and close the connection, which frees every lock still held."""
        if self._checking is not None:
            self._checking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checking
            self._checking = None
        if self.connection is not None:
            await self.connection.close()
            self.connection = None

    async def _connect(self) -> None:
        assert self.url is not None
        async with db.wrap_exceptions(f"cannot connect to {db.redact(self.url)}"):
            self.connection = await psycopg.AsyncConnection.connect(
                self.url,
                autocommit=True,
                connect_timeout=db.connect_timeout(self.timeout),
                application_name=application_name("lease"),
                **LEASE_KEEPALIVES,
            )

    async def _lock(self, name: str, params: dict[str, Any]) -> bool:
        """One advisory-lock query on the lease connection."""
        assert self.connection is not None
        async with db.wrap_exceptions():
            row = await (await self.connection.execute(db.query(name), params)).fetchone()
        return bool(row and row[0] is not False)

    async def try_lease(self, job_id: int) -> bool:
        """Take a job's lease; False when another live session holds it."""
        async with self._leasing:
            if await self._lock("try_lease", {"class": LEASE_CLASS, "job_id": job_id}):
                self.leased.add(job_id)
                return True
            return False

    async def release(self, job_id: int) -> None:
        """Give a finished, paused or lost job's lease back."""
        async with self._leasing:
            if job_id not in self.leased:
                return
            self.leased.discard(job_id)
            if not self._usable():
                return
            try:
                await self._lock("release_lease", {"class": LEASE_CLASS, "job_id": job_id})
            except db.DatabaseError as error:
                logger.warning("Could not release job %s's lease: %s", job_id, error)

    async def join_run(self, run_id: int) -> None:
        """Hold the run's shared lock while this process lives, so later processes can join."""
        async with self._leasing:
            await self._lock("join_run", {"class": RUN_CLASS, "run_id": run_id})
            self.runs.add(run_id)

    async def _check(self) -> None:
        """Use the lease connection every few seconds, so one cut while idle is renewed at once."""
        while True:
            await asyncio.sleep(self.check_interval)
            try:
                await self.renew()
            except db.DatabaseError as error:
                logger.warning(
                    "Could not reconnect the lease connection (%s); trying again in %.1f s",
                    error,
                    self.check_interval,
                )

    def _usable(self) -> bool:
        """Whether there is a connection that is neither closed nor known broken."""
        conn = self.connection
        return conn is not None and not conn.closed and not conn.broken

    async def _alive(self) -> bool:
        """Whether the lease connection still answers (a cheap round trip)."""
        if not self._usable():
            return False
        assert self.connection is not None
        try:
            async with db.wrap_exceptions():
                await self.connection.execute("SELECT 1")
        except db.DatabaseError as error:
            logger.warning("The lease connection was lost: %s", error)
            return False
        return True

    async def renew(self) -> None:
        """After the lease connection died, take its locks again; tell who lost which lease.

        Sends `leases_renewed`: the jobs whose locks others hold now, and those taken again,
        whose tokens the registry checks (another process may have claimed one in between).
        """
        async with self._leasing:
            if await self._alive():
                return
            if self.connection is not None:
                await self.connection.close()
            await self._connect()
            for run_id in sorted(self.runs):
                await self._lock("join_run", {"class": RUN_CLASS, "run_id": run_id})
            lost = set()
            for job_id in sorted(self.leased):
                if not await self._lock("try_lease", {"class": LEASE_CLASS, "job_id": job_id}):
                    lost.add(job_id)
            self.leased -= lost
            kept = sorted(self.leased)
            if self.stats is not None:
                self.stats.inc_value("civicband/leases/renewed")
            logger.warning(
                "Reconnected the lease connection; leases now held by others: %s",
                sorted(lost) or "none",
            )
        if self.signals is not None:
            self.signals.send_catch_log(
                civicband_signals.leases_renewed, lost=sorted(lost), kept=kept
            )
