"""The crawl's one way into PostgreSQL: find or start the server, migrate, pool, and hold leases."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Self, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from scrapy import signals
from scrapy.crawler import Crawler
from scrapy.signalmanager import SignalManager
from scrapy.statscollectors import StatsCollector

from civicband import db
from civicband import signals as civicband_signals
from civicband.backoff import backoff_delay
from civicband.embedded import EmbeddedPostgres, EmbeddedPostgresError

logger = logging.getLogger(__name__)


def application_name(role: str) -> str:
    """Who holds a connection, as pg_stat_activity shows it: the crawl's host and process."""
    return f"civicband {role} {socket.gethostname()}:{os.getpid()}"[:63]


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

T = TypeVar("T")


class Store:
    """Open the database once per crawl, on first use, and close it when the engine stops."""

    def __init__(
        self,
        url: str | None,
        home: Path,
        pool_size: int,
        *,
        timeout: float = 10.0,
        retries: int = 6,
        backoff: tuple[float, float] = (1.0, 60.0),
        stats: StatsCollector | None = None,
        check_interval: float = 5.0,
        signals: SignalManager | None = None,
    ) -> None:
        self.url = url
        self.timeout = timeout
        self.home = home
        self.pool_size = pool_size
        self.retries = retries
        self.backoff = backoff
        self.stats = stats
        self.embedded: EmbeddedPostgres | None = None
        self.pool: AsyncConnectionPool | None = None
        self._opening = asyncio.Lock()
        # One connection holds this process's leases (session advisory locks) and its run lock.
        self.lease: psycopg.AsyncConnection | None = None
        self.leased: set[int] = set()
        self.runs: set[int] = set()
        self._leasing = asyncio.Lock()
        self.check_interval = check_interval
        self.signals = signals
        self._checking: asyncio.Task | None = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        """Read the database settings; close when the engine stops (after every close step)."""
        settings = crawler.settings
        store = cls(
            url=settings.get("CIVICBAND_DATABASE_URL") or None,
            home=Path(settings.get("CIVICBAND_HOME") or ".civicband"),
            pool_size=settings.getint("CIVICBAND_DB_POOL_SIZE"),
            timeout=settings.getfloat("CIVICBAND_DB_TIMEOUT"),
            retries=settings.getint("CIVICBAND_DB_RETRIES"),
            backoff=(
                settings.getfloat("CIVICBAND_BACKOFF_BASE"),
                settings.getfloat("CIVICBAND_BACKOFF_MAX"),
            ),
            stats=crawler.stats,
            check_interval=settings.getfloat("CIVICBAND_LEASE_CHECK_INTERVAL"),
            signals=crawler.signals,
        )
        crawler.signals.connect(store.engine_stopped, signal=signals.engine_stopped)
        return store

    @property
    def is_open(self) -> bool:
        """Whether open() succeeded and close() has not run."""
        return self.pool is not None

    async def open(self) -> None:
        """Connect, starting the embedded server and applying migrations first if needed."""
        async with self._opening:
            if self.pool is not None:
                return
            if self.url is None:
                self.embedded = EmbeddedPostgres(self.home)
                try:
                    self.url = await asyncio.to_thread(self.embedded.start)
                except EmbeddedPostgresError as error:
                    raise db.DatabaseError(str(error)) from None
                logger.info(
                    "Embedded PostgreSQL: data in %s, log in %s",
                    self.embedded.data_dir,
                    self.embedded.log_path,
                )
            await asyncio.to_thread(self._migrate, self.url)
            pool = AsyncConnectionPool(
                self.url,
                kwargs={"application_name": application_name("pages")},
                min_size=1,
                max_size=self.pool_size,
                open=False,
                configure=self._configure,
                check=AsyncConnectionPool.check_connection,
                # How long a page waits for a connection before its retry logic takes over.
                timeout=self.timeout,
                name="civicband",
            )
            try:
                await pool.open(wait=True, timeout=self.timeout)
            except (PoolTimeout, psycopg.Error) as error:
                await pool.close()
                raise db.DatabaseError(
                    f"cannot connect to {db.redact(self.url)}: {db.one_line(error)}"
                ) from None
            self.pool = pool
            await self._connect_lease()
            self._checking = asyncio.ensure_future(self._check_lease())
            logger.info("Mirror database: %s", db.redact(self.url))

    async def _connect_lease(self) -> None:
        assert self.url is not None
        try:
            self.lease = await psycopg.AsyncConnection.connect(
                self.url,
                autocommit=True,
                connect_timeout=max(1, round(self.timeout)),
                application_name=application_name("lease"),
                **LEASE_KEEPALIVES,
            )
        except psycopg.Error as error:
            raise db.DatabaseUnavailable(
                f"cannot connect to {db.redact(self.url)}: {db.one_line(error)}"
            ) from None

    async def _lock(self, name: str, params: dict[str, Any]) -> bool:
        """One advisory-lock query on the lease connection."""
        assert self.lease is not None
        async with db.wrap_exceptions():
            row = await (await self.lease.execute(db.query(name), params)).fetchone()
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
            if self.lease is None or self.lease.closed or self.lease.broken:
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

    async def _check_lease(self) -> None:
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

    async def _lease_alive(self) -> bool:
        """Whether the lease connection still answers (a cheap round trip)."""
        if self.lease is None or self.lease.closed or self.lease.broken:
            return False
        try:
            await self.lease.execute("SELECT 1")
        except psycopg.Error as error:
            logger.warning("The lease connection was lost: %s", db.one_line(error))
            return False
        return True

    async def renew(self) -> None:
        """After the lease connection died, take its locks again; tell who lost which lease.

        Sends `leases_renewed`: the jobs whose locks others hold now, and those taken again,
        whose tokens the registry checks (another process may have claimed one in between).
        """
        async with self._leasing:
            if await self._lease_alive():
                return
            if self.lease is not None:
                await self.lease.close()
            await self._connect_lease()
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

    async def transact(
        self, work: Callable[[psycopg.AsyncConnection], Awaitable[T]], what: str
    ) -> T:
        """Run `work` in one transaction, again on a fresh connection after a lost one.

        Database errors come out translated (db.wrap_exceptions); DatabaseUnavailable only once
        CIVICBAND_DB_RETRIES retries, spaced by the same backoff as requests, are used up.
        """
        attempt = 0
        while True:
            try:
                async with db.wrap_exceptions(), self.connection() as conn, conn.transaction():
                    return await work(conn)
            except db.DatabaseUnavailable as error:
                attempt += 1
                if attempt > self.retries:
                    raise
                delay = backoff_delay(attempt, *self.backoff, 0.0)
                if self.stats is not None:
                    self.stats.inc_value("civicband/db/retries")
                logger.warning(
                    "Database trouble while %s (%s); retrying in %.1f s", what, error, delay
                )
                await asyncio.sleep(delay)
                with contextlib.suppress(db.DatabaseError):  # still down: the next try says so
                    await self.renew()

    @staticmethod
    def _migrate(url: str) -> None:
        with db.connect(url) as conn:
            try:
                applied = db.migrate(conn)
            except psycopg.Error as error:
                raise db.DatabaseError(
                    f"cannot apply the schema to {db.redact(url)}: {db.one_line(error)}"
                ) from None
        if applied:
            logger.info("Applied schema migrations %s", applied)

    @staticmethod
    async def _configure(conn: psycopg.AsyncConnection) -> None:
        # A page (up to 1000 rows of OCR text) stays in memory instead of spilling to disk.
        await conn.execute("SET temp_buffers = '64MB'")
        # Session settings that change no result and no durability, applied where the server
        # has them: no JIT (each page's statements run for milliseconds; compiling them would
        # cost more), and lz4 for values PostgreSQL compresses (TOAST), which takes a fraction
        # of pglz's CPU time, here most of a page's COPY (pages take more disk: 81 MB instead
        # of 63 MB for the benchmark's 60,000 rows).
        await conn.execute(
            "SELECT set_config(v.name, v.value, false)"
            " FROM (VALUES ('jit', 'off'), ('default_toast_compression', 'lz4')) AS v (name, value)"
            " JOIN pg_settings s ON s.name = v.name"
            " WHERE s.enumvals IS NULL OR v.value = ANY (s.enumvals)"
        )
        await conn.execute(db.query("staging_table"))
        await conn.commit()

    def connection(self):  # noqa: ANN201 - psycopg's own context manager type
        """Borrow a pooled connection."""
        assert self.pool is not None, "Store.open() was not awaited"
        return self.pool.connection()

    async def close(self) -> None:
        """Close the pool and stop the embedded server if this process started it."""
        if self._checking is not None:
            self._checking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checking
            self._checking = None
        if self.lease is not None:
            await self.lease.close()  # releases every lease and run lock still held
            self.lease = None
        if self.pool is not None:
            await self.pool.close()
            self.pool = None
        if self.embedded is not None:
            await asyncio.to_thread(self.embedded.stop)
            self.embedded = None

    async def engine_stopped(self) -> None:
        """Release the database once the crawl and everything that records its end are done."""
        await self.close()
