"""The embedded server's home folder: its lock, and the processes registered as its users."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from civicband.embedded.binaries import EmbeddedPostgresError, one_line

logger = logging.getLogger(__name__)


class Home:
    """`<home>`: created private, locked across processes, and its registry of user processes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.users_dir = path / "users"

    def make(self) -> None:
        """Create the home private (mode 700): the log may quote rows of failed statements."""
        if not self.path.is_dir():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                self.path.mkdir(mode=0o700)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Serialise start/stop across processes sharing this home (flock, freed on death)."""
        try:
            self.make()
            fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise EmbeddedPostgresError(
                f"embedded PostgreSQL cannot lock {self.path}: {one_line(error)}"
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

    def register(self, pid: int) -> None:
        """Record `pid` (with its start time, against pid reuse) as a user of the server."""
        self.users_dir.mkdir(exist_ok=True)
        (self.users_dir / str(pid)).write_text(f"{start_time(pid)}\n")

    def unregister(self, pid: int) -> None:
        """`pid` no longer uses the server."""
        with contextlib.suppress(FileNotFoundError):
            (self.users_dir / str(pid)).unlink()

    def live_users(self) -> list[int]:
        """Registered pids still alive, the dead ones' files removed."""
        live: list[int] = []
        if not self.users_dir.is_dir():
            return live
        for entry in self.users_dir.iterdir():
            try:
                pid = int(entry.name)
                recorded = entry.read_text().strip()
            except (ValueError, OSError):
                entry.unlink(missing_ok=True)
                continue
            if pid_alive(pid) and (recorded == "" or recorded == start_time(pid)):
                live.append(pid)
            else:
                entry.unlink(missing_ok=True)
        return sorted(live)


def pid_alive(pid: int) -> bool:
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


def start_time(pid: int) -> str:
    """The process's start time in clock ticks (Linux), to tell a reused pid apart; else ''."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[19]
    except (OSError, IndexError):
        return ""
