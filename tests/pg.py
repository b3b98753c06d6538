"""pytest plugin: a real PostgreSQL for the tests, and a fresh database per test.

Set CIVICBAND_TEST_DATABASE_URL to use an existing server (its user must be allowed to
CREATE DATABASE); otherwise one embedded server is started for the whole session in a
temporary folder and deleted at the end.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from civicband.embedded import EmbeddedPostgres


def with_dbname(url: str, dbname: str) -> str:
    """The same connection URL (or key=value conninfo) pointing at another database."""
    if url.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(url)
        return urlunsplit(parts._replace(path="/" + quote(dbname, safe="")))
    return make_conninfo(url, dbname=dbname)


@pytest.fixture(scope="session")
def pg_base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server URL for the whole session: shared, so each test pays only for CREATE DATABASE."""
    external = os.environ.get("CIVICBAND_TEST_DATABASE_URL")
    if external:
        yield external
        return
    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg") / ".civicband")
    url = server.start()
    try:
        yield url
    finally:
        # destroy, not just stop: as root the data lives in /var/lib/civicband, not in tmp.
        server.destroy()


@pytest.fixture
def database_url(pg_base_url: str) -> Iterator[str]:
    """A fresh, empty database for one test, dropped afterwards: tests never see each other."""
    dbname = f"civicband_test_{secrets.token_hex(6)}"
    with psycopg.connect(pg_base_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    try:
        yield with_dbname(pg_base_url, dbname)
    finally:
        with psycopg.connect(pg_base_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname))
            )
