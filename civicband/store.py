"""The crawl's one way into PostgreSQL: find or start the server, migrate, and pool connections."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Self

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from scrapy import Spider, signals
from scrapy.crawler import Crawler

from civicband import db
from civicband.embedded import EmbeddedPostgres, EmbeddedPostgresError

logger = logging.getLogger(__name__)

LEASE_CLASS = 0x63626A62  # "cbjb": the first key of every job's advisory lock


class Store:
    """Open the database once per crawl, on first use, and close it when the spider closes."""

    def __init__(self, url: str | None, home: Path, pool_size: int, timeout: float = 10.0) -> None:
        self.url = url
        self.timeout = timeout
        self.home = home
        self.pool_size = pool_size
        self.embedded: EmbeddedPostgres | None = None
        self.pool: AsyncConnectionPool | None = None
        self._opening = asyncio.Lock()
        # One connection holds the leases (session advisory locks) of every job this process runs.
        self.lease: psycopg.AsyncConnection | None = None
        self.lease_pid = 0
        self.leased: set[int] = set()
        self._leasing = asyncio.Lock()
        # Jobs that must stop (their page could not be stored): the spider drops their pages.
        self.stopped_jobs: set[int] = set()

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        """Read the database settings and close with the spider."""
        settings = crawler.settings
        store = cls(
            url=settings.get("CIVICBAND_DATABASE_URL") or None,
            home=Path(settings.get("CIVICBAND_HOME") or ".civicband"),
            pool_size=settings.getint("CIVICBAND_DB_POOL_SIZE"),
            timeout=settings.getfloat("CIVICBAND_DB_TIMEOUT"),
        )
        crawler.signals.connect(store.spider_closed, signal=signals.spider_closed)
        return store

    @property
    def shown_url(self) -> str:
        """The URL as logs may show it."""
        return db.redact(self.url) if self.url else f"embedded PostgreSQL under {self.home}"

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
            logger.info("Mirror database: %s", db.redact(self.url))

    async def _connect_lease(self) -> None:
        assert self.url is not None
        try:
            self.lease = await psycopg.AsyncConnection.connect(
                self.url, autocommit=True, connect_timeout=max(1, round(self.timeout))
            )
        except psycopg.Error as error:
            raise db.DatabaseError(
                f"cannot connect to {db.redact(self.url)}: {db.one_line(error)}"
            ) from None
        self.lease_pid = self.lease.info.backend_pid

    async def try_lease(self, job_id: int) -> bool:
        """Take a job's lease; False when another live session holds it."""
        async with self._leasing:
            assert self.lease is not None
            cursor = await self.lease.execute(
                db.query("try_lease"), {"class": LEASE_CLASS, "job_id": job_id}
            )
            row = await cursor.fetchone()
            if row and row[0]:
                self.leased.add(job_id)
                return True
            return False

    async def release(self, job_id: int) -> None:
        """Give a finished or paused job's lease back."""
        async with self._leasing:
            if job_id not in self.leased:
                return
            self.leased.discard(job_id)
            if self.lease is None or self.lease.closed:
                return
            try:
                await self.lease.execute(
                    db.query("release_lease"), {"class": LEASE_CLASS, "job_id": job_id}
                )
            except psycopg.Error as error:
                logger.warning("Could not release job %s's lease: %s", job_id, db.one_line(error))

    async def lease_alive(self) -> bool:
        """Ask the lease connection; a dead one means our leases died with it."""
        async with self._leasing:
            if self.lease is None or self.lease.closed or self.lease.broken:
                return False
            try:
                await self.lease.execute("SELECT 1")
            except psycopg.Error:
                return False
            return True

    async def renew_leases(self) -> set[int]:
        """After the lease connection died, take our jobs' leases again; returns the jobs lost."""
        async with self._leasing:
            if self.lease is not None and not self.lease.closed and not self.lease.broken:
                try:
                    await self.lease.execute("SELECT 1")
                    return set()
                except psycopg.Error:
                    pass
            if self.lease is not None:
                await self.lease.close()
            await self._connect_lease()
            assert self.lease is not None
            lost = set()
            for job_id in sorted(self.leased):
                cursor = await self.lease.execute(
                    db.query("try_lease"), {"class": LEASE_CLASS, "job_id": job_id}
                )
                row = await cursor.fetchone()
                if not (row and row[0]):
                    lost.add(job_id)
            self.leased -= lost
            logger.warning(
                "Reconnected the lease connection; jobs lost to others: %s", lost or "none"
            )
            return lost

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
        if self.lease is not None:
            await self.lease.close()  # releases every lease still held
            self.lease = None
        if self.pool is not None:
            await self.pool.close()
            self.pool = None
        if self.embedded is not None:
            await asyncio.to_thread(self.embedded.stop)
            self.embedded = None

    async def spider_closed(self, spider: Spider) -> None:
        """Release the database when the crawl ends."""
        await self.close()
