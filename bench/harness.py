"""Shared pieces of the benchmarks: the site, the look-alike, PostgreSQL and measured processes."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
from psycopg import sql

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from civicband.embedded import EmbeddedPostgres  # noqa: E402
from tests.lookalike import data  # noqa: E402
from tests.lookalike.fixtures import LookalikeServer  # noqa: E402

PYTHON = REPO / ".venv" / "bin" / "python"
LOOPS = Path(__file__).with_name("loops.py")
DATASETTE = "1.0a28"  # civic.band's version
USER_AGENT = "civicband-bench/1"
# Benchmarks measure trusted access (as the user's backfill runs): full pages, no rate limit.
SECRET = "civicband-bench"
MB = 1024 * 1024


@dataclass
class Run:
    """One measured process: wall time, peak RSS of its process tree, exit status."""

    wall: float
    peak_rss: int
    returncode: int


def revision() -> str:
    """The commit measured, with `+dirty` when the working tree differs from it."""
    git = ["git", "-C", str(REPO)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--", "civicband", "sql"], capture_output=True, text=True
    ).stdout.strip()
    return head.stdout.strip() + ("+dirty" if dirty else "")


def make_site(root: Path, subdomain: str, rows: list[dict]) -> Path:
    """Write one site whose agendas table holds `rows` (minutes empty); return its db path."""
    return data.write_site(root, subdomain, rows, [])


def mean_row_bytes(rows: list[dict]) -> float:
    """Mean size of a row as JSON, in bytes."""
    return sum(len(json.dumps(row)) for row in rows) / max(len(rows), 1)


@contextmanager
def lookalike(root: Path) -> Iterator[str]:
    """Serve `root` with the Datasette 1.0a28 look-alike; yield its base URL."""
    with lookalike_server(root) as server:
        yield server.base_url


@contextmanager
def lookalike_server(root: Path) -> Iterator[LookalikeServer]:
    """Serve `root` with the Datasette 1.0a28 look-alike; yield the server (its control API)."""
    server = LookalikeServer(DATASETTE, root)
    try:
        yield server
    finally:
        server.stop()


def warm(base_url: str, subdomain: str) -> None:
    """Make the look-alike build the site's Datasette app before anything is timed."""
    url = f"{base_url}/{subdomain}/meetings/agendas.json?_sort=id&_size=1"
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=60) as response:
        assert json.loads(response.read())["ok"], url


@contextmanager
def postgres(home: Path) -> Iterator[str]:
    """One embedded PostgreSQL for the whole run; its data is deleted at the end."""
    server = EmbeddedPostgres(home)
    try:
        yield server.start()
    finally:
        server.destroy()


def with_dbname(url: str, dbname: str) -> str:
    """The same server URL pointing at another database."""
    return urlunsplit(urlsplit(url)._replace(path="/" + quote(dbname, safe="")))


@contextmanager
def fresh_database(admin_url: str, label: str) -> Iterator[str]:
    """CREATE DATABASE for one contender; drop it and CHECKPOINT afterwards."""
    name = f"bench_{label}_{secrets.token_hex(3)}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        conn.execute("CHECKPOINT")  # the previous contender's dirty pages are not ours to write
    try:
        yield with_dbname(admin_url, name)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            query = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
            conn.execute(query.format(sql.Identifier(name)))


def dbname(url: str) -> str:
    """The database a URL points at."""
    return urlsplit(url).path.lstrip("/")


@contextmanager
def cloned_database(admin_url: str, template_url: str, label: str) -> Iterator[str]:
    """CREATE DATABASE ... TEMPLATE: a copy of another database's state; dropped afterwards."""
    name = f"bench_{label}_{secrets.token_hex(3)}"
    template = sql.Identifier(dbname(template_url))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), template)
        )
        conn.execute("CHECKPOINT")
    try:
        yield with_dbname(admin_url, name)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            query = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
            conn.execute(query.format(sql.Identifier(name)))


def count(url: str, table: str) -> int:
    """Rows in a table of a contender's database."""
    with psycopg.connect(url) as conn:
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table)))
        return int(row.fetchone()[0])  # type: ignore[index]


# A tiny launcher process runs each contender. wait4's ru_maxrss is the high-water mark of the
# process, and exec keeps the high-water mark of the memory it replaces: spawned straight from
# this process (which holds the generated rows), a child would report our peak, not its own.
LAUNCHER = """
import json, os, sys, time
start = time.perf_counter()
pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - start
code = os.waitstatus_to_exitcode(status)
with open(sys.argv[1], "w") as out:
    json.dump({"wall": wall, "maxrss_kb": usage.ru_maxrss, "returncode": code}, out)
"""


# Where contenders find their modules' bytecode (PYTHONPYCACHEPREFIX); None: no cache.
BYTECODE = REPO / ".cache" / "bench-bytecode"
bytecode_cache: Path | None = None


def use_bytecode_cache(*roots: Path) -> None:
    """Compile every module a contender may import into BYTECODE, once; contenders then use it.

    An installed program starts from cached bytecode. Without it (PYTHONDONTWRITEBYTECODE set,
    no __pycache__ in the virtualenv, as on some CI machines) each process compiles Scrapy,
    Twisted and psycopg from source at start, about 1 s of CPU that says nothing about the code
    measured. The cache lives under .cache/; after the first run this only checks timestamps.
    """
    global bytecode_cache
    paths = subprocess.run(
        [
            str(PYTHON),
            "-c",
            "import sysconfig; p = sysconfig.get_paths(); print(p['stdlib']);"
            " print(p['purelib']); print(p['platlib'])",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    env = {**os.environ, "PYTHONPYCACHEPREFIX": str(BYTECODE)}
    compileall = [str(PYTHON), "-m", "compileall", "-q", "-j0"]
    skip_stdlib = r"/(test|tests|idlelib|lib2to3|tkinter|turtledemo|ensurepip|site-packages)/"
    for args in (
        ["-x", skip_stdlib, paths[0]],
        ["-x", r"/tests?/", *sorted(set(paths[1:])), str(REPO / "civicband"), str(LOOPS)],
        *([str(root / "civicband")] for root in roots),
    ):
        # Files that do not compile (test data) are reported and skipped: not our concern.
        subprocess.run([*compileall, *args], env=env, capture_output=True, check=False)
    bytecode_cache = BYTECODE


def measure(cmd: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path = REPO) -> Run:
    """Run `cmd` from the repository (or `cwd`) under the launcher: wall time, peak RSS, status."""
    environ = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", **(env or {})}
    environ.pop("VIRTUAL_ENV", None)
    if bytecode_cache is not None:
        environ["PYTHONPYCACHEPREFIX"] = str(bytecode_cache)
    result = log.with_suffix(".json")
    launcher = [str(PYTHON), "-I", "-S", "-c", LAUNCHER, str(result), *cmd]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            launcher,
            cwd=cwd,
            env=environ,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            proc.wait()
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher and the contender
            proc.wait()
            raise
    if proc.returncode != 0:
        raise RuntimeError(f"launcher exited {proc.returncode}:\n{tail(log)}")
    got = json.loads(result.read_text())
    return Run(got["wall"], got["maxrss_kb"] * 1024, got["returncode"])


def crawl(
    site_url: str,
    subdomain: str,
    database_url: str,
    log: Path,
    document_type: str = "agenda",
    extra: tuple[str, ...] = (),
    root: Path = REPO,
) -> Run:
    """The whole `scrapy crawl civicband` process (one site's agendas unless told).

    `extra`: more command-line arguments, e.g. ("-a", "full=true", "-s", "NAME=value").
    `root`: another checkout of the project (an earlier commit) whose code runs instead, with
    this checkout's environment: its `civicband` comes first on the path.
    """
    cmd = [str(PYTHON), "-m", "scrapy", "crawl", "civicband"]
    cmd += ["-a", f"subdomain={subdomain}", "-a", f"document_type={document_type}"]
    cmd += ["-s", f"CIVICBAND_SITE_URL={site_url}", *extra]
    env = {"CIVICBAND_DATABASE_URL": database_url, "CIVICBAND_SERVICE_SECRET": SECRET}
    if root != REPO:
        env["PYTHONPATH"] = str(root)
    return measure(cmd, log, env, cwd=root)


def loop(kind: str, site_url: str, subdomain: str, database_url: str, log: Path) -> Run:
    """One of the reference loops in bench/loops.py, as its own process."""
    cmd = [str(PYTHON), str(LOOPS), kind, "--site-url", site_url, "--subdomain", subdomain]
    cmd += ["--database-url", database_url]
    return measure(cmd, log, {"CIVICBAND_SERVICE_SECRET": SECRET})


def tail(log: Path, lines: int = 20) -> str:
    """The end of a contender's output, for error messages."""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def fetched_rows(log: Path) -> int:
    """The row count a loop printed as its last line (`{"rows": N}`)."""
    return int(json.loads(log.read_text().strip().splitlines()[-1])["rows"])
