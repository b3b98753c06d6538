"""Where the embedded server's data and socket live, and which system user runs it."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pwd
import re
import stat
from pathlib import Path

from civicband.embedded.binaries import PORT, SYSTEM_DIR, EmbeddedPostgresError, run_tool
from civicband.embedded.home import Home

logger = logging.getLogger(__name__)

SERVICE_ACCOUNT = "civicband"  # system user created as root when no `postgres` user exists
# sun_path is 108 bytes including the terminating NUL.
SOCKET_PATH_MAX = 107


class Layout:
    """The data folder (as root: under SYSTEM_DIR, linked from the home), socket and account."""

    def __init__(self, home: Home) -> None:
        self.home = home
        self.as_root = os.geteuid() == 0
        link = home.path / "pgdata"
        if link.is_symlink():
            self.data_dir = link.resolve()
        elif link.exists() or not self.as_root:
            self.data_dir = link
        else:
            self.data_dir = SYSTEM_DIR / instance_name(home.path) / "pgdata"
        self.log_path = home.path / "postgresql.log"

    def server_account(self) -> pwd.struct_passwd | None:
        """The system user the server runs as; None means this process's own user."""
        if self.data_dir.exists() and not self.data_dir.is_dir():
            raise EmbeddedPostgresError(
                f"embedded PostgreSQL cannot use {self.data_dir}: not a directory"
            )
        owner = self.data_dir.stat().st_uid if self.data_dir.exists() else None
        if not self.as_root:
            if owner is not None and owner != os.geteuid():
                raise EmbeddedPostgresError(
                    f"embedded PostgreSQL data in {self.data_dir} belongs to {user_name(owner)}:"
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
        self.home.make()
        run_tool(self.log_path, None, "create a system user", command, timeout=60)
        return pwd.getpwnam(SERVICE_ACCOUNT)

    def prepare_data_dir(self, account: pwd.struct_passwd | None) -> None:
        """Create the data folder (mode 700, the server user's), and as root the symlink to it."""
        self.home.make()
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
                make_private_dir(instance, account)
        if not self.data_dir.exists():
            logger.info("Embedded PostgreSQL: data folder %s is new", self.data_dir)
            make_private_dir(self.data_dir, account)
        link = self.home.path / "pgdata"
        if not link.is_symlink() and not link.exists():
            link.symlink_to(self.data_dir, target_is_directory=True)

    def default_socket_dir(self) -> Path:
        """The data folder when its socket path fits in sun_path, else a short folder in /tmp."""
        if len(os.fsencode(self.data_dir / f".s.PGSQL.{PORT}")) <= SOCKET_PATH_MAX:
            return self.data_dir
        return fallback_socket_dir(self.data_dir)

    def prepare_socket_dir(self, account: pwd.struct_passwd | None) -> Path:
        """Return the socket folder, creating the /tmp fallback private to the server user."""
        socket_dir = self.default_socket_dir()
        if socket_dir == self.data_dir:
            return socket_dir
        uid = account.pw_uid if account else os.geteuid()
        with contextlib.suppress(FileExistsError):
            make_private_dir(socket_dir, account)
        info = socket_dir.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != uid or info.st_mode & 0o077:
            raise EmbeddedPostgresError(
                f"embedded PostgreSQL cannot use socket folder {socket_dir}: it is not a mode-700"
                f" folder owned by {user_name(uid)}"
            )
        return socket_dir


def instance_name(home: Path) -> str:
    """`<project>-<home>-<hash of the absolute path>`, readable and unique per home."""
    label = "-".join(part.lstrip(".") for part in (home.parent.name, home.name) if part)
    label = re.sub(r"[^A-Za-z0-9_.-]+", "_", label)[:40].strip("-_.") or "home"
    return f"{label}-{hashlib.sha256(os.fsencode(home)).hexdigest()[:10]}"


def fallback_socket_dir(data_dir: Path) -> Path:
    """A short socket folder in /tmp, named by the data folder, for when its path is too long."""
    return Path("/tmp") / f"civicband-{hashlib.sha256(os.fsencode(data_dir)).hexdigest()[:10]}"


def make_private_dir(path: Path, account: pwd.struct_passwd | None) -> None:
    """mkdir mode 700, owned by the server user."""
    path.mkdir(mode=0o700)
    if account is not None:
        os.chown(path, account.pw_uid, account.pw_gid)
    path.chmod(0o700)


def user_name(uid: int) -> str:
    """A uid as a name for messages."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"
