"""Connecting to the mirror's PostgreSQL, applying the schema, and the named queries."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from urllib.parse import unquote

import psycopg
import psycopg.conninfo
from psycopg_pool import PoolTimeout

MIGRATIONS_LOCK = 0x63697669  # "civi": one migrator at a time across processes
_NAME = re.compile(r"^-- name: (\w+)\s*$", re.M)


class DatabaseError(RuntimeError):
    """The mirror's database is unreachable or refused us; the message is one line."""


class DatabaseUnavailable(DatabaseError):
    """The connection was lost or none could be had in time: worth retrying on a fresh one."""


TRANSIENT = (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout)


def translate(error: psycopg.Error | PoolTimeout, what: str = "") -> DatabaseError:
    """The driver's error as ours: transient ones can be retried, others not; one line."""
    kind = DatabaseUnavailable if isinstance(error, TRANSIENT) else DatabaseError
    text = one_line(error)
    return kind(f"{what}: {text}" if what else text)


class wrap_exceptions:  # noqa: N801 - used as a function, like contextlib's helpers
    """Translate the driver's errors in one place, around blocking (with) or async work."""

    def __init__(self, what: str = "") -> None:
        self.what = what

    def __enter__(self) -> None:
        """Nothing to set up: only errors leaving the block matter."""

    def __exit__(self, kind: type | None, error: BaseException | None, trace: object) -> None:
        """A driver's error leaves as DatabaseError or DatabaseUnavailable; others as they are."""
        if isinstance(error, psycopg.Error | PoolTimeout):
            raise translate(error, self.what) from error

    async def __aenter__(self) -> None:
        """As __enter__."""

    async def __aexit__(
        self, kind: type | None, error: BaseException | None, trace: object
    ) -> None:
        """As __exit__."""
        self.__exit__(kind, error, trace)


def connect_timeout(seconds: float) -> int:
    """CIVICBAND_DB_TIMEOUT as libpq's connect_timeout: whole seconds, at least 1 (0 = forever)."""
    return max(1, round(seconds))


# The places libpq reads a password from, by its grammar (not urllib's): a URL's user:password@
# (ending at the first "@" or "/": "#", "?" and "&" belong to the password), a URL's query
# parameter whose percent-decoded name is password (to the next "&"), a key=value string's
# password= (quoted, or to the next space; either with \\ escapes). The userinfo form is also
# looked for anywhere, as in a dbname=postgresql://... value. Spaces are libpq's (isspace).
_URL_PREFIX = re.compile(r"postgres(?:ql)?://")
_USERINFO_PASSWORD = re.compile(r"(postgres(?:ql)?://[^@/:]*:)([^@/]*)(?=@)")
_QUERY_PARAMETER = re.compile(r"([?&])([^&=]*)=([^&]*)")
_SPACE = r" \t\n\v\f\r"
_DSN_PASSWORD = re.compile(
    rf"password[{_SPACE}]*=[{_SPACE}]*('(?:[^'\\]|\\.)*'|(?:\\.|[^{_SPACE}\\])+)"
)


def redact(url: str) -> str:
    """Show a database URL or key=value string without its password, for logs and errors."""
    shown = _USERINFO_PASSWORD.sub(r"\1***", url)
    if _URL_PREFIX.match(url):
        return _QUERY_PARAMETER.sub(
            lambda m: f"{m[1]}{m[2]}=***" if unquote(m[2]) == "password" else m[0], shown
        )
    return _DSN_PASSWORD.sub("password=***", shown)


def passwords(url: str) -> list[str]:
    """The password in a libpq URL or key=value string, in every spelling a stat could hold."""
    try:
        found = [psycopg.conninfo.conninfo_to_dict(url).get("password") or ""]
    except psycopg.Error:  # not a connection string libpq can read: only our own reading
        found = []
    found += [m[2] for m in _USERINFO_PASSWORD.finditer(url)]
    if _URL_PREFIX.match(url):
        found += [m[3] for m in _QUERY_PARAMETER.finditer(url) if unquote(m[2]) == "password"]
    else:
        values = _DSN_PASSWORD.findall(url)
        found += [spelling for text in values for spelling in (text, *_unquote_dsn(text))]
    spellings = {text for text in found if text} | {unquote(text) for text in found if text}
    return sorted(spellings, key=len, reverse=True)


def _unquote_dsn(text: str) -> tuple[str, ...]:
    """A key=value value as meant ('quoted', \\ escapes undone), and as written inside quotes."""
    if len(text) >= 2 and text[0] == text[-1] == "'":
        return text[1:-1], re.sub(r"\\(.)", r"\1", text[1:-1])
    return (re.sub(r"\\(.)", r"\1", text),)


def one_line(error: BaseException) -> str:
    """Fold a driver's multi-line message into one line for the user."""
    text = str(error).strip() or type(error).__name__
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _sql_file(*parts: str) -> str:
    return resources.files("civicband").joinpath("sql", *parts).read_text(encoding="utf-8")


@cache
def queries() -> dict[str, str]:
    """Parse sql/queries.sql once into its named blocks."""
    text = _sql_file("queries.sql")
    found = list(_NAME.finditer(text))
    blocks = {}
    for match, following in zip(found, [*found[1:], None], strict=True):
        body = text[match.end() : following.start() if following else len(text)]
        lines = [line for line in body.strip().splitlines() if not line.startswith("--")]
        blocks[match.group(1)] = "\n".join(lines).strip()
    return blocks


def query(name: str) -> str:
    """One named query from sql/queries.sql."""
    return queries()[name]


def migration_files() -> list[tuple[int, str, str]]:
    """The ordered migrations shipped in the package: (version, name, sql)."""
    folder = resources.files("civicband").joinpath("sql", "migrations")
    found = []
    for entry in folder.iterdir():
        match = re.match(r"^(\d{4})_(\w+)\.sql$", entry.name)
        if match:
            found.append((int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    return sorted(found)


def schema_sql() -> str:
    """The whole current schema, for fresh databases."""
    return _sql_file("schema.sql")


def migrate(conn: psycopg.Connection) -> list[int]:
    """Bring the schema up to date; safe when several processes start at once."""
    applied_now = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [MIGRATIONS_LOCK])
        conn.execute(
            "CREATE TABLE IF NOT EXISTS civicband_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied timestamptz NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in conn.execute("SELECT version FROM civicband_migrations")}
        migrations = migration_files()
        fresh = not done and not _has_table(conn, "backfill_jobs")
        if fresh:
            conn.execute(schema_sql())
        for version, name, text in migrations:
            if version in done:
                continue
            if not fresh:
                conn.execute(text)
            conn.execute(
                "INSERT INTO civicband_migrations (version, name) VALUES (%s, %s)", [version, name]
            )
            applied_now.append(version)
    return applied_now


def _has_table(conn: psycopg.Connection, name: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [name]).fetchone()
    return bool(row and row[0])


def connect(url: str, *, timeout: float, autocommit: bool = False) -> psycopg.Connection:
    """Open a blocking connection within `timeout` s; a failure is one line naming the URL."""
    with wrap_exceptions(f"cannot connect to {redact(url)}"):
        return psycopg.connect(url, autocommit=autocommit, connect_timeout=connect_timeout(timeout))


def apply_migrations(url: str, timeout: float) -> list[int]:
    """Connect and bring the schema up to date; a failure is one line naming the URL."""
    with (
        connect(url, timeout=timeout) as conn,
        wrap_exceptions(f"cannot apply the schema to {redact(url)}"),
    ):
        return migrate(conn)
