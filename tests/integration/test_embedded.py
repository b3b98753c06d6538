"""The embedded PostgreSQL runner, against the real server binaries."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from civicband import embedded
from civicband.embedded import EmbeddedPostgres, EmbeddedPostgresError

ROOT = os.geteuid() == 0


@pytest.fixture
def make_server() -> Iterator:
    """Build servers on throwaway homes and delete their data afterwards, whatever happened."""
    servers: list[EmbeddedPostgres] = []

    def make(home: Path) -> EmbeddedPostgres:
        server = EmbeddedPostgres(home)
        servers.append(server)
        return server

    yield make
    for server in servers:
        with contextlib.suppress(EmbeddedPostgresError):
            server.destroy()


def postmaster_pid(server: EmbeddedPostgres) -> int:
    return int((server.data_dir / "postmaster.pid").read_text().split()[0])


def test_start_query_idempotent_stop_and_restart_keep_data(
    tmp_path: Path, make_server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="civicband.embedded")
    server = make_server(tmp_path / ".civicband")
    url = server.start()
    assert url == server.url()
    assert str(server.data_dir) in caplog.text  # the log says where the data is
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("civicband",)
        assert conn.execute("SHOW fsync").fetchone() == ("on",)
        assert conn.execute("SHOW listen_addresses").fetchone() == ("",)
        conn.execute("CREATE TABLE kept (value text)")
        conn.execute("INSERT INTO kept VALUES ('still here')")

    pid = postmaster_pid(server)
    assert server.start() == url  # idempotent: same server, same URL, no second registration
    assert postmaster_pid(server) == pid
    assert [p.name for p in (server.home / "users").iterdir()] == [str(os.getpid())]

    server.stop()
    assert not (server.data_dir / "postmaster.pid").exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2)

    url = server.start()
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT value FROM kept").fetchall() == [("still here",)]
    server.stop()


def test_another_process_does_not_stop_a_server_in_use(tmp_path: Path, make_server) -> None:
    home = tmp_path / ".civicband"
    server = make_server(home)
    url = server.start()
    pid = postmaster_pid(server)
    snippet = textwrap.dedent(
        f"""
        import psycopg
        from civicband.embedded import EmbeddedPostgres
        server = EmbeddedPostgres({str(home)!r})
        with psycopg.connect(server.start()) as conn:
            conn.execute("SELECT 1")
        server.stop()
        print("ok")
        """
    )
    other = subprocess.run(
        [sys.executable, "-c", snippet], capture_output=True, text=True, timeout=60
    )
    assert other.returncode == 0, other.stderr
    assert other.stdout.strip() == "ok"
    assert postmaster_pid(server) == pid
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    server.stop()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2)


def test_start_recovers_after_the_server_was_killed(tmp_path: Path, make_server) -> None:
    server = make_server(tmp_path / ".civicband")
    url = server.start()
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE kept AS SELECT 42 AS answer")
    os.kill(postmaster_pid(server), signal.SIGKILL)  # leaves a stale postmaster.pid
    assert server.start() == url
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT answer FROM kept").fetchone() == (42,)
    server.stop()


def test_a_file_where_the_data_folder_should_be_is_a_one_line_error(
    tmp_path: Path, make_server
) -> None:
    home = tmp_path / ".civicband"
    home.mkdir()
    (home / "pgdata").write_text("not a folder")
    with pytest.raises(EmbeddedPostgresError) as raised:
        make_server(home).start()
    message = str(raised.value)
    assert "\n" not in message
    assert str(home / "pgdata") in message


def test_a_server_that_fails_to_start_points_at_its_log(
    tmp_path: Path, make_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = {**embedded.SERVER_SETTINGS, "shared_buffers": "lots"}
    monkeypatch.setattr(embedded, "SERVER_SETTINGS", settings)
    server = make_server(tmp_path / ".civicband")
    with pytest.raises(EmbeddedPostgresError) as raised:
        server.start()
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("embedded PostgreSQL failed to start")
    assert str(server.log_path) in message
    assert "shared_buffers" in message  # the server's own complaint, from the log
    assert raised.value.__cause__ is None  # no subprocess traceback chained to it


def ancestors_modes(path: Path) -> dict[Path, int]:
    return {parent: parent.stat().st_mode for parent in path.parents}


def test_where_the_data_lives(tmp_path: Path, make_server) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)  # like a home folder: the server user cannot traverse it
    home = private / "project" / ".civicband"
    home.parent.mkdir()
    before = ancestors_modes(home)
    server = make_server(home)
    server.start()
    info = server.data_dir.stat()
    assert info.st_mode & 0o777 == 0o700
    if ROOT:
        assert not server.data_dir.is_relative_to(home)
        assert server.data_dir.is_relative_to(embedded.SYSTEM_DIR)
        assert (home / "pgdata").is_symlink()
        assert (home / "pgdata").resolve() == server.data_dir
        assert info.st_uid != 0
    else:
        assert server.data_dir == home / "pgdata"
        assert info.st_uid == os.geteuid()
    assert server.log_path == home / "postgresql.log"
    assert ancestors_modes(home) == before  # no parent folder was loosened
    server.stop()
