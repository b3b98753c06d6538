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


class Store:
    """Open the database once per crawl, on first use, and close it when the spider closes."""

    def __init__(self, url: str | None, home: Path, pool_size: int) -> None:
        self.url = url
        self.home = home
        self.pool_size = pool_size
        self.embedded: EmbeddedPostgres | None = None
        self.pool: AsyncConnectionPool | None = None
        self._opening = asyncio.Lock()
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
                name="civicband",
            )
            try:
                await pool.open(wait=True, timeout=15)
            except (PoolTimeout, psycopg.Error) as error:
                await pool.close()
                raise db.DatabaseError(
                    f"cannot connect to {db.redact(self.url)}: {db.one_line(error)}"
                ) from None
            self.pool = pool
            logger.info("Mirror database: %s", db.redact(self.url))

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
        await conn.execute(db.query("staging_table"))
        await conn.commit()

    def connection(self):  # noqa: ANN201 - psycopg's own context manager type
        """Borrow a pooled connection."""
        assert self.pool is not None, "Store.open() was not awaited"
        return self.pool.connection()

    async def close(self) -> None:
        """Close the pool and stop the embedded server if this process started it."""
        if self.pool is not None:
            await self.pool.close()
            self.pool = None
        if self.embedded is not None:
            await asyncio.to_thread(self.embedded.stop)
            self.embedded = None

    async def spider_closed(self, spider: Spider) -> None:
        """Release the database when the crawl ends."""
        await self.close()
