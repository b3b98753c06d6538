"""The crawl's one way into PostgreSQL: find or start the server, migrate, pool, retry.

The lease connection and the locks it holds belong to `Leases` (leases.py), which Store opens
and closes with the pool; the embedded server to `EmbeddedPostgres` (embedded.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Self, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool
from scrapy import signals
from scrapy.crawler import Crawler
from scrapy.signalmanager import SignalManager
from scrapy.statscollectors import StatsCollector

from civicband import db
from civicband.backoff import backoff_delay
from civicband.embedded import EmbeddedPostgres, EmbeddedPostgresError
from civicband.leases import Leases, application_name

logger = logging.getLogger(__name__)

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
        self.leases = Leases(
            timeout=timeout, check_interval=check_interval, stats=stats, signals=signals
        )

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
                self.url = await self._start_embedded()
            applied = await asyncio.to_thread(db.apply_migrations, self.url, self.timeout)
            if applied:
                logger.info("Applied schema migrations %s", applied)
            pool = AsyncConnectionPool(
                self.url,
                kwargs={
                    "application_name": application_name("pages"),
                    "connect_timeout": db.connect_timeout(self.timeout),
                },
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
                async with db.wrap_exceptions(f"cannot connect to {db.redact(self.url)}"):
                    await pool.open(wait=True, timeout=self.timeout)
            except db.DatabaseError:
                await pool.close()
                raise
            self.pool = pool
            await self.leases.open(self.url)
            logger.info("Mirror database: %s", db.redact(self.url))

    async def _start_embedded(self) -> str:
        """Start (or join) the embedded server under CIVICBAND_HOME; its URL."""
        self.embedded = EmbeddedPostgres(self.home)
        try:
            url = await asyncio.to_thread(self.embedded.start)
        except EmbeddedPostgresError as error:
            raise db.DatabaseError(str(error)) from None
        logger.info(
            "Embedded PostgreSQL: data in %s, log in %s",
            self.embedded.data_dir,
            self.embedded.log_path,
        )
        return url

    async def try_lease(self, job_id: int) -> bool:
        """Take a job's lease (Leases.try_lease)."""
        return await self.leases.try_lease(job_id)

    async def release(self, job_id: int) -> None:
        """Give a job's lease back (Leases.release)."""
        await self.leases.release(job_id)

    async def join_run(self, run_id: int) -> None:
        """Hold the run's shared lock (Leases.join_run)."""
        await self.leases.join_run(run_id)

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
                    await self.leases.renew()

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
        """Close the leases and the pool; stop the embedded server if this process started it."""
        await self.leases.close()  # releases every lease and run lock still held
        if self.pool is not None:
            await self.pool.close()
            self.pool = None
        if self.embedded is not None:
            await asyncio.to_thread(self.embedded.stop)
            self.embedded = None

    async def engine_stopped(self) -> None:
        """Release the database once the crawl and everything that records its end are done."""
        await self.close()
