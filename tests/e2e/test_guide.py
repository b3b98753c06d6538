"""The user guide's commands, run for real: every ```sh block of docs/RESILIENT_BACKFILL.md.

How a block is found and run:

- Each ```sh block is preceded by `<!-- test: NAME -->`, and one story below runs it (STORIES
  says which). An sh block without a name, a name no story runs, a story whose block is gone,
  a fence without a language, or shell under another name (```bash, ```console, ...) fails
  `test_every_sh_block_is_run_by_a_story`: nothing in the guide is silently left unrun.
  ```text blocks are not run (a real civic.band, a crontab, scrapyd: see the guide's end).
- Commands run through bash, as a user's shell would, in a fresh directory, with the project's
  `scrapy` first on PATH and `CIVICBAND_DATABASE_URL` and `CIVICBAND_SERVICE_SECRET` in the
  environment, as after the guide's first `export` lines.
- The guide's real-looking values are replaced by the test's (PLACEHOLDERS): the database URL,
  the secret, the stats file, the JSON-RPC port the crawl chose, the progress interval. Site
  names are not replaced: the look-alike serves `alameda.ca` and `berkeley.ca` itself.
- What no command shows is the test environment's: SCRAPY_SETTINGS_MODULE names a module that
  imports civicband.settings and points CIVICBAND_SITE_URL and CIVICBAND_INDEX_URL at this
  module's own look-alike (Datasette 1.0a28, civic.band's line; its index lists only the
  guide's two sites, so `civicband-sites` then `subdomain=all` is exact), asks 25-row pages
  so that small sites have several, shortens backoff as the other e2e tests do, and writes
  each process's stats to a file of its own (GUIDE_SETTINGS adds a story's own: the processes
  story holds one job per process, so that two processes on four jobs both get work).
  Subprocesses read a bytecode cache under .cache/ as an installed program would (this
  machine sets PYTHONDONTWRITEBYTECODE), which halves each command's start-up.

Each story starts from a fresh database and the sites as generated, and checks what the guide
says of each command: exit status, jobs, the mirror equal to the source in every column,
requests made, log lines and output.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from civicband import __version__
from tests.e2e.crawl import (
    JOB_KEYS,
    ROOT,
    SECRET,
    assert_mirror_equals_source,
    committed,
    execute,
    fetch,
    is_digest,
    jobs,
    mirrored,
    page_requests,
    register,
    wait_for,
)
from tests.lookalike import data
from tests.lookalike.fixtures import LookalikeServer, Site, Source

GUIDE = ROOT / "docs" / "RESILIENT_BACKFILL.md"
VERSION = "1.0a28"  # civic.band's Datasette line
SITES = {
    "alameda.ca": (120, 60, {"name": "Alameda", "state": "CA", "kind": "city"}),
    "berkeley.ca": (80, 40, {"name": "Berkeley", "state": "CA", "kind": "city"}),
}
BATCH = 25
TABLES = {"agenda": "agendas", "minutes": "minutes"}
PAGES = r"/meetings/(agendas|minutes)\.json"
UNREACHABLE = "postgresql://civicband:change-me@127.0.0.1:9/civicband"

# The guide's real-looking values, which Guide.substitute replaces by the test's.
DATABASE_URL = "postgresql://civicband:change-me@db.example.org/civicband"
SECRET_VALUE = "your-service-secret"
STATS_FILE = "/var/tmp/civicband-stats.json"
RPC_ADDRESS = "127.0.0.1:6080"
INTERVAL = "CIVICBAND_PROGRESS_INTERVAL=10"
PLACEHOLDERS = (DATABASE_URL, SECRET_VALUE, STATS_FILE, RPC_ADDRESS, INTERVAL)

# Which story runs which blocks (every sh block of the guide, each exactly once).
STORIES = {
    "first_run": (
        "backfill-one",
        "backfill-all",
        "catch-up",
        "changes",
        "full",
        "jobs",
        "stats-file",
    ),
    "interrupted": ("resume", "who-holds"),
    "jobdir": ("jobdir",),
    "processes": ("processes",),
    "live": ("jsonrpc-crawl", "jsonrpc-curl"),
    "trouble": ("secret", "user-agent", "verify-only", "verify-failed", "repair", "allow-shrink"),
    "database_trouble": ("db-check", "exit-codes"),
}

SHELL_LIKE = {"bash", "shell", "console", "zsh", "sh-session", "shellsession", "terminal"}
ALLOWED = {"sh", "text", "json", "sql"}
TAG = re.compile(r"<!-- test: ([a-z0-9-]+) -->")


# ---- the guide -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Fence:
    """One fenced block of the guide."""

    language: str
    body: str
    line: int
    tag: str | None


def fences(text: str) -> list[Fence]:
    """Every fenced block, with the test tag on the line before it (if any)."""
    lines = text.splitlines()
    found: list[Fence] = []
    i = 0
    while i < len(lines):
        opening = re.match(r"^(\s*)```(.*)$", lines[i])
        if opening is None:
            i += 1
            continue
        start, language, body = i, opening.group(2).strip(), []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith("```"):
            body.append(lines[i])
            i += 1
        assert i < len(lines), f"the fence opened on line {start + 1} is never closed"
        before = next((lines[j].strip() for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        tag = TAG.fullmatch(before)
        found.append(Fence(language, "\n".join(body), start + 1, tag and tag.group(1)))
        i += 1
    return found


def sh_blocks() -> dict[str, str]:
    """The guide's sh blocks by tag."""
    blocks: dict[str, str] = {}
    for fence in fences(GUIDE.read_text()):
        if fence.language == "sh" and fence.tag is not None:
            blocks[fence.tag] = fence.body
    return blocks


def split_commands(block: str) -> list[str]:
    """A block's commands: one per line, unless a quote or a backslash carries on; no comments."""
    commands, current = [], ""
    for line in block.splitlines():
        current = f"{current}\n{line}" if current else line
        try:
            shlex.split(current, comments=True)
        except ValueError:  # an open quote, or a trailing backslash: the command goes on
            continue
        if current.strip() and not current.strip().startswith("#"):
            commands.append(current.strip())
        current = ""
    assert not current, f"a command is never closed: {current!r}"
    return commands


def test_every_sh_block_is_run_by_a_story():
    text = GUIDE.read_text()
    found = fences(text)
    problems = []
    tags: list[str] = []
    for fence in found:
        where = f"line {fence.line}"
        if fence.language in SHELL_LIKE or fence.language == "":
            problems.append(f"{where}: ```{fence.language} block: make it ```sh (run) or ```text")
        elif fence.language not in ALLOWED:
            problems.append(f"{where}: unknown fence language {fence.language!r}")
        elif fence.language == "sh" and fence.tag is None:
            problems.append(f"{where}: an sh block needs <!-- test: NAME --> and a story")
        elif fence.language != "sh" and fence.tag is not None:
            problems.append(f"{where}: a {fence.language} block is never run; drop its tag")
        if fence.language == "sh" and fence.tag is not None:
            tags.append(fence.tag)
    orphans = len(TAG.findall(text)) - len([fence for fence in found if fence.tag])
    assert orphans == 0, "a <!-- test: NAME --> line is not right above its block"
    duplicated = [tag for tag, n in Counter(tags).items() if n > 1]
    assert duplicated == [], f"tags used twice: {duplicated}"
    run = [tag for story in STORIES.values() for tag in story]
    assert len(run) == len(set(run)), "a block is claimed by two stories"
    assert sorted(set(tags) - set(run)) == [], "sh blocks no story runs"
    assert sorted(set(run) - set(tags)) == [], "stories run blocks the guide no longer has"
    assert problems == [], "\n".join(problems)
    commands = "\n".join(sh_blocks().values())
    unused = [value for value in PLACEHOLDERS if value not in commands]
    assert unused == [], f"placeholders no sh block uses (drop them): {unused}"


# ---- the world the commands run in ---------------------------------------------------------


SETTINGS_MODULE = '''\
"""civicband's settings, pointed at the guide test's look-alike (tests/e2e/test_guide.py)."""

import json
import os

from civicband.settings import *  # noqa: F403

CIVICBAND_SITE_URL = {site_url!r}
CIVICBAND_INDEX_URL = {index_url!r}
CIVICBAND_BATCH_SIZE = {batch}
CIVICBAND_BACKOFF_BASE = 0.2
CIVICBAND_BACKOFF_MAX = 2
CIVICBAND_STATS_FILE = os.path.join(os.environ["GUIDE_STATS_DIR"], f"stats-{{os.getpid()}}.json")
globals().update(json.loads(os.environ.get("GUIDE_SETTINGS") or "{{}}"))
'''


@dataclass
class World:
    """This module's look-alike, its two sites as generated, and the settings module."""

    source: Source
    sites: dict[str, Site]
    rows: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]]
    settings_dir: Path

    def fresh(self) -> None:
        """Faults, rate limits and the request log cleared; every site as generated."""
        self.source.reset()
        for name, site in self.sites.items():
            agendas, minutes = self.rows[name]
            data.write_site(self.source.root, name, agendas, minutes)
            site.source.reload(name)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A look-alike of this module's own, so its index lists only the guide's sites."""
    root = tmp_path_factory.mktemp("guide-lookalike") / "sites"
    server = LookalikeServer(VERSION, root)
    try:
        source = Source(server)
        sites = {
            name: source.create_site(agendas, minutes, subdomain=name, meta=meta)
            for name, (agendas, minutes, meta) in SITES.items()
        }
        rows = {name: (site.rows("agendas"), site.rows("minutes")) for name, site in sites.items()}
        settings_dir = tmp_path_factory.mktemp("guide-settings")
        (settings_dir / "guide_settings.py").write_text(
            SETTINGS_MODULE.format(
                site_url=source.site_url, index_url=source.index_url, batch=BATCH
            )
        )
        yield World(source, sites, rows, settings_dir)
    finally:
        server.stop()


@dataclass
class Ran:
    """What one command or block did."""

    command: str
    returncode: int
    stdout: str
    stderr: str
    stats: list[dict[str, Any]]

    def lines(self, pattern: str) -> list[str]:
        """Log lines matching a regular expression."""
        return [line for line in self.stderr.splitlines() if re.search(pattern, line)]

    @property
    def stat(self) -> dict[str, Any]:
        """The stats of the one crawl this command ran."""
        assert len(self.stats) == 1, f"{len(self.stats)} crawls wrote stats\n{self}"
        return self.stats[0]

    def __str__(self) -> str:
        return (
            f"$ {self.command}\nexit {self.returncode}\n--- stdout ---\n{self.stdout[-3000:]}"
            f"\n--- stderr ---\n{self.stderr[-6000:]}"
        )

    __repr__ = __str__


@dataclass
class Running:
    """A command started in the background, in a process group of its own."""

    command: str
    process: subprocess.Popen
    log: Path

    def output(self) -> str:
        """What it said so far."""
        return self.log.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        """What a terminal's Ctrl-C, or `kill -- -PGID`, sends: the whole process group."""
        os.killpg(self.process.pid, signum)

    def wait(self, timeout: float = 120) -> int:
        """Its exit status."""
        return self.process.wait(timeout=timeout)

    def __str__(self) -> str:
        return f"$ {self.command}\nexit {self.process.poll()}\n--- log ---\n{self.output()[-6000:]}"

    __repr__ = __str__


@dataclass
class Guide:
    """One story's way of running the guide's blocks against the world and its database."""

    world: World
    database_url: str
    tmp: Path
    story: str
    port: int | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    ran: set[str] = field(default_factory=set)
    started: list[Running] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.cwd = self.tmp / "work"
        self.cwd.mkdir()
        self.stats_dir = self.tmp / "stats"
        self.stats_dir.mkdir()
        self.blocks = sh_blocks()
        self._seen: set[Path] = set()

    @property
    def source(self) -> Source:
        """The look-alike."""
        return self.world.source

    def site(self, name: str) -> Site:
        """One of the guide's sites."""
        return self.world.sites[name]

    def substitute(self, text: str) -> str:
        """The guide's values replaced by this story's."""
        values = {
            DATABASE_URL: shlex.quote(self.database_url),
            SECRET_VALUE: SECRET,
            STATS_FILE: str(self.tmp / "civicband-stats.json"),
            INTERVAL: "CIVICBAND_PROGRESS_INTERVAL=0.5",
        }
        if RPC_ADDRESS in text:
            assert self.port is not None, "a JSON-RPC block before the crawl said its port"
            values[RPC_ADDRESS] = f"127.0.0.1:{self.port}"
        for value, replacement in values.items():
            text = text.replace(value, replacement)
        return text

    def block(self, tag: str) -> str:
        """A block of the guide, ready to run; only the story's own."""
        assert tag in STORIES[self.story], f"{tag} is not one of {self.story}'s blocks"
        self.ran.add(tag)
        return self.substitute(self.blocks[tag])

    def commands(self, tag: str, count: int) -> list[str]:
        """A block's commands one by one: exactly `count`, or the story no longer fits."""
        commands = split_commands(self.block(tag))
        assert len(commands) == count, f"{tag}: expected {count} commands, got {commands}"
        return commands

    def env(self, **extra: str) -> dict[str, str]:
        """The user's shell: the project on PATH, the database and the secret exported."""
        environ = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "CIVICBAND_DATABASE_URL": self.database_url,
            "CIVICBAND_SERVICE_SECRET": SECRET,
            "SCRAPY_SETTINGS_MODULE": "guide_settings",
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(self.world.settings_dir), os.environ.get("PYTHONPATH")])
            ),
            "PYTHONPYCACHEPREFIX": str(ROOT / ".cache" / "guide-bytecode"),
            "GUIDE_STATS_DIR": str(self.stats_dir),
            "GUIDE_SETTINGS": json.dumps(self.settings),
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }
        environ.pop("PYTHONDONTWRITEBYTECODE", None)
        environ.pop("SCRAPY_PROJECT", None)
        environ.pop("VIRTUAL_ENV", None)
        return {**environ, **extra}

    def _new_stats(self) -> list[dict[str, Any]]:
        files = sorted(set(self.stats_dir.glob("stats-*.json")) - self._seen)
        self._seen |= set(files)
        return [json.loads(path.read_text()) for path in files]

    def sh(self, command: str, timeout: float = 120, **env: str) -> Ran:
        """Run one command (or a whole block) in bash; returns what it did."""
        self._new_stats()
        done = subprocess.run(
            ["bash", "-c", command],
            cwd=self.cwd,
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return Ran(command, done.returncode, done.stdout, done.stderr, self._new_stats())

    def run(self, tag: str, **env: str) -> Ran:
        """A whole block, as one script."""
        return self.sh(self.block(tag), **env)

    def start(self, command: str, name: str, **env: str) -> Running:
        """A command in the background, its output in a file."""
        log = self.tmp / f"{name}.log"
        with log.open("w") as output:
            process = subprocess.Popen(
                ["bash", "-c", command],
                cwd=self.cwd,
                env=self.env(**env),
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started.append(Running(command, process, log))
        return self.started[-1]

    def stop_all(self) -> None:
        """Kill whatever a failed story left running in the background."""
        for running in self.started:
            if running.process.poll() is None:
                running.signal(signal.SIGKILL)
                running.wait(timeout=30)

    def done(self) -> None:
        """The story ran every block it claims."""
        assert self.ran == set(STORIES[self.story]), sorted(set(STORIES[self.story]) - self.ran)


@pytest.fixture
def guide(request, world: World, database_url: str, tmp_path: Path) -> Iterator[Guide]:
    """The guide, for the story the test is named after; the world as generated."""
    story = request.node.name.removeprefix("test_")
    assert story in STORIES, f"{request.node.name} is not a story (STORIES)"
    world.fresh()
    runner = Guide(world, database_url, tmp_path, story)
    try:
        yield runner
    finally:
        runner.stop_all()
        world.source.reset()


def latest(database_url: str) -> dict[tuple[str, str], dict[str, Any]]:
    """The newest job of each (site, type)."""
    return {(j["subdomain"], j["document_type"]): j for j in jobs(database_url)}


def assert_exact(guide: Guide, *names: str) -> None:
    """The mirror equals the source for these sites, and their newest jobs passed."""
    newest = latest(guide.database_url)
    for name in names:
        assert_mirror_equals_source(guide.database_url, guide.site(name))
        for kind in ("agenda", "minutes"):
            job = newest[(name, kind)]
            assert (job["status"], job["verify_status"]) == ("completed", "passed"), job


def summary(text: str) -> list[str]:
    """The summary lines at the end of a crawl's log."""
    lines = [line for line in text.splitlines() if line.strip()]
    heads = [i for i, line in enumerate(lines) if re.search(r"INFO: Summary \(\d+\):$", line)]
    assert heads, text[-3000:]
    tail = lines[heads[-1] + 1 :]
    assert tail and all("INFO:   " in line for line in tail), "the summary is not the end"
    return [line.split("INFO:   ", 1)[1] for line in tail]


def all_started(guide: Guide, count: int) -> bool:
    """Whether `count` jobs exist and each has committed a page (so each has a cursor)."""
    try:
        found = jobs(guide.database_url)
    except Exception:  # noqa: BLE001 - the schema may not exist yet
        return False
    return len(found) == count and all(j["batches_committed"] >= 1 for j in found)


def holders(guide: Guide, command: str, site: str) -> list[str]:
    """The who-holds block's lines for one site's running jobs."""
    shown = guide.sh(command)
    assert shown.returncode == 0, shown
    return [line.rstrip() for line in shown.stdout.splitlines() if site in line]


def slow_pages(guide: Guide, seconds: float) -> None:
    """Every table page takes a while, so that a signal lands in the middle of a crawl."""
    guide.source.faults.add(match=PAGES, action="hang", seconds=seconds, times=-1)


def page_counts(guide: Guide) -> Counter:
    """Table pages the sites answered, by URL."""
    return Counter(
        (r["path"], r["query"]) for r in page_requests(guide.source) if r["status"] == 200
    )


# ---- the stories ---------------------------------------------------------------------------


def test_first_run(guide: Guide):
    alameda = guide.site("alameda.ca")

    first = guide.run("backfill-one")
    assert first.returncode == 0, first
    assert "alameda.ca answers with JSON: added to municipalities" in first.stderr
    assert_exact(guide, "alameda.ca")
    assert {j["mode"] for j in jobs(guide.database_url)} == {"full"}
    assert [line.split(" job ")[0] for line in summary(first.stderr)] == [
        "alameda.ca/agenda",
        "alameda.ca/minutes",
    ]

    every = guide.run("backfill-all")
    assert every.returncode == 0, every
    listed = fetch(guide.database_url, "SELECT subdomain, name FROM municipalities ORDER BY 1")
    assert listed == [
        {"subdomain": "alameda.ca", "name": "Alameda"},
        {"subdomain": "berkeley.ca", "name": "Berkeley"},
    ]
    assert_exact(guide, "alameda.ca", "berkeley.ca")
    modes = {key: job["mode"] for key, job in latest(guide.database_url).items()}
    assert modes == {
        ("alameda.ca", "agenda"): "catchup",
        ("alameda.ca", "minutes"): "catchup",
        ("berkeley.ca", "agenda"): "full",
        ("berkeley.ca", "minutes"): "full",
    }

    # A rebuild at the source: pages gone, new ones, entities re-extracted under the same ids.
    ids = sorted(alameda.ids("agendas"))
    alameda.delete_rows("agendas", ids[:5])
    alameda.add_rows("agendas", alameda.new_rows("agendas", 7, seed="guide: new pages"))
    rows = {row["id"]: row for row in alameda.rows("agendas")}
    alameda.delete_rows("agendas", ids[40:43])
    alameda.add_rows(
        "agendas",
        [{**rows[i], "entities_json": '{"persons": ["Re-extracted"]}'} for i in ids[40:43]],
    )
    guide.source.clear_requests()
    caught_up = guide.run("catch-up")
    assert caught_up.returncode == 0, caught_up
    assert_exact(guide, "alameda.ca", "berkeley.ca")
    agenda = latest(guide.database_url)[("alameda.ca", "agenda")]
    assert agenda["mode"] == "catchup"
    assert (agenda["pages_created"], agenda["pages_updated"], agenda["pages_removed"]) == (7, 3, 5)
    assert page_requests(guide.source) == [], "a catch-up pages through nothing"
    quiet = [r for r in guide.source.requests() if r["path"].startswith("/berkeley.ca/")]
    assert len(quiet) == 1 and is_digest(quiet[0]), quiet  # both tables in one answer

    # The feed from 0: every page the mirror holds once, and the five removed pages.
    read = guide.run("changes")
    assert read.returncode == 0, read
    lines = [json.loads(x) for x in (guide.cwd / "changes.jsonl").read_text().splitlines()]
    held = fetch(guide.database_url, "SELECT subdomain, document_type, id FROM meeting_pages")
    upserts = [(x["subdomain"], x["document_type"], x["id"]) for x in lines if x["op"] == "upsert"]
    assert sorted(upserts) == sorted(tuple(r.values()) for r in held)
    assert {x["id"] for x in lines if x["op"] == "delete"} == set(ids[:5])
    versions = [x["version"] for x in lines]
    assert versions == sorted(set(versions))
    assert (guide.cwd / "last-version").read_text() == f"{versions[-1]}\n"
    again = guide.run("changes")
    assert again.returncode == 0, again
    assert (guide.cwd / "changes.jsonl").read_text() == ""
    assert (guide.cwd / "last-version").read_text() == f"{versions[-1]}\n"

    full = guide.run("full")
    assert full.returncode == 0, full
    for kind, table in (("agenda", "agendas"), ("minutes", "minutes")):
        job = latest(guide.database_url)[("alameda.ca", kind)]
        total = len(alameda.rows(table))
        assert (job["mode"], job["verify_status"]) == ("full", "passed"), job
        assert (job["pages_created"], job["pages_updated"]) == (0, total), job
    assert_exact(guide, "alameda.ca", "berkeley.ca")

    every_job, failed, as_json = (guide.sh(c) for c in guide.commands("jobs", 3))
    assert every_job.returncode == 0, every_job
    table = every_job.stdout.splitlines()
    assert table[0].split()[:5] == ["id", "subdomain", "document_type", "mode", "status"], every_job
    assert table[-1] == "(10 jobs)", every_job  # --limit 10 of the 12 jobs
    assert (failed.returncode, failed.stdout.strip()) == (0, "No jobs."), failed
    listing = json.loads(as_json.stdout)
    assert listing and {(j["subdomain"], j["document_type"]) for j in listing} == {
        ("alameda.ca", "agenda")
    }
    assert list(listing[0]) == JOB_KEYS
    assert listing[0]["id"] > listing[-1]["id"], "newest first"

    crawl_command, query = guide.commands("stats-file", 2)
    stats_run = guide.sh(crawl_command)
    assert stats_run.returncode == 0, stats_run
    written = json.loads((guide.tmp / "civicband-stats.json").read_text())
    assert written["civicband/exit_code"] == 0 and written["civicband/jobs/completed"] == 4
    shown = guide.sh(query)
    assert shown.returncode == 0, shown
    assert json.loads(shown.stdout) == {"exit": 0, "completed": 4, "failed": 0}
    guide.done()


def test_interrupted(guide: Guide):
    register(guide.database_url, guide.site("alameda.ca"), guide.site("berkeley.ca"))
    slow_pages(guide, 0.4)

    # Ctrl-C: in-flight requests finish, the jobs are paused, exit status 3.
    paused = guide.start("scrapy crawl civicband -a subdomain=alameda.ca", "ctrl-c")
    wait_for(lambda: all_started(guide, 2), what="both jobs to commit a page")
    paused.signal(signal.SIGINT)
    assert paused.wait() == 3, paused
    assert {j["status"] for j in jobs(guide.database_url, "alameda.ca")} == {"paused"}
    assert summary(paused.output()) and "(full): paused" in paused.output()

    # kill -9 in the middle of another crawl; while it runs (its second pages never come), its
    # jobs are held.
    guide.source.faults.clear()
    guide.source.faults.add(match=r"/berkeley\.ca/meetings/.*_next=", action="hang", times=-1)
    killed = guide.start("scrapy crawl civicband -a subdomain=berkeley.ca", "kill-9")
    wait_for(lambda: all_started(guide, 4), what="berkeley's jobs to commit a page")
    (who,) = guide.commands("who-holds", 1)
    held = holders(guide, who, "berkeley.ca")
    lease = rf"\| civicband lease {re.escape(socket.gethostname())}:\d+, server pid \d+"
    assert len(held) == 2 and all(re.search(lease, line) for line in held), held
    again = guide.sh("scrapy crawl civicband -a subdomain=berkeley.ca")
    assert again.returncode == 0, again  # skipping is not failing
    skipped = again.lines(r"Job \d+ berkeley\.ca/(agenda|minutes) is .*in another process: skipped")
    assert len(skipped) == 2, again
    killed.signal(signal.SIGKILL)
    killed.wait()
    # PostgreSQL drops the leases as soon as it sees the dead process's connection close.
    wait_for(
        lambda: (
            [line.endswith("| nobody: abandoned") for line in holders(guide, who, "berkeley")]
            == [True, True]
        ),
        what="the leases to go with the process",
    )
    before = {key: job["id"] for key, job in latest(guide.database_url).items()}

    guide.source.faults.clear()
    resumed = guide.run("resume")
    assert resumed.returncode == 0, resumed
    assert_exact(guide, "alameda.ca", "berkeley.ca")
    assert {key: job["id"] for key, job in latest(guide.database_url).items()} == before
    assert resumed.stat["civicband/jobs/resumed"] == 4
    resumed_jobs = jobs(guide.database_url)
    assert len(resumed_jobs) == 4, resumed_jobs  # both sites' agenda and minutes, resumed in place
    for job in resumed_jobs:
        total = len(guide.site(job["subdomain"]).rows(TABLES[job["document_type"]]))
        assert (job["pages_fetched"], job["pages_created"]) == (total, total), job
    guide.done()


def test_jobdir(guide: Guide):
    register(guide.database_url, guide.site("alameda.ca"), guide.site("berkeley.ca"))
    slow_pages(guide, 0.4)
    (command,) = guide.commands("jobdir", 1)
    first = guide.start(command, "jobdir")
    wait_for(lambda: all_started(guide, 4), what="every job to commit a page")
    first.signal(signal.SIGINT)
    assert first.wait() == 3, first
    # The pages in flight are stored: a small table's last one may complete its job.
    statuses = Counter(j["status"] for j in jobs(guide.database_url))
    assert set(statuses) <= {"paused", "completed"} and statuses["paused"] >= 2, statuses
    assert (guide.cwd / "crawls" / "all-1").is_dir()
    guide.source.faults.clear()
    second = guide.run("jobdir")
    assert second.returncode == 0, second
    assert_exact(guide, "alameda.ca", "berkeley.ca")
    assert len(jobs(guide.database_url)) == 4, "the same jobs continued"
    pages = page_counts(guide)
    assert pages and max(pages.values()) == 1, [p for p, n in pages.items() if n > 1]
    assert second.stat["civicband/jobs/resumed"] == statuses["paused"]
    guide.done()


def test_processes(guide: Guide):
    register(guide.database_url, guide.site("alameda.ca"), guide.site("berkeley.ca"))
    slow_pages(guide, 0.15)
    guide.settings["CIVICBAND_MAX_ACTIVE_JOBS"] = 1  # so that two processes both get work
    both = guide.run("processes")
    assert both.returncode == 0, both
    assert len(both.stats) == 2, both
    assert [s["civicband/exit_code"] for s in both.stats] == [0, 0], both
    assert all(s.get("civicband/rows/fetched", 0) > 0 for s in both.stats), both.stats
    assert sum(s["civicband/rows/fetched"] for s in both.stats) == 300
    assert_exact(guide, "alameda.ca", "berkeley.ca")
    done = jobs(guide.database_url)
    assert len(done) == 4 and len({j["run_id"] for j in done}) == 1, done  # one shared run
    pages = page_counts(guide)
    assert max(pages.values()) == 1, [p for p, n in pages.items() if n > 1]
    guide.done()


def test_live(guide: Guide):
    register(guide.database_url, guide.site("alameda.ca"), guide.site("berkeley.ca"))
    slow_pages(guide, 0.3)
    (command,) = guide.commands("jsonrpc-crawl", 1)
    crawl = guide.start(command, "live")
    listening = wait_for(
        lambda: re.search(
            r"JSON-RPC: listening on http://127\.0\.0\.1:(\d+)/crawler/stats \(read-only\)",
            crawl.output(),
        ),
        what="the JSON-RPC server",
    )
    guide.port = int(listening.group(1))
    wait_for(lambda: committed(guide.database_url, "alameda.ca") >= 1, what="a page to commit")
    asked = guide.run("jsonrpc-curl")
    assert asked.returncode == 0, asked
    decoder, answers, text = json.JSONDecoder(), [], asked.stdout.strip()
    while text:
        answer, end = decoder.raw_decode(text)
        answers.append(answer)
        text = text[end:].strip()
    stats, fetched, progress = (a["result"] for a in answers)
    assert stats["civicband/jobs/started"] >= 1 and SECRET not in asked.stdout
    assert isinstance(fetched, int) and fetched > 0
    assert progress and set(progress[0]) == {
        "job_id",
        "subdomain",
        "document_type",
        "status",
        "state",
        "rows_done",
        "rows_expected",
        "rate",
        "eta_seconds",
        "requests_left",
    }
    guide.source.faults.clear()
    assert crawl.wait() == 0, crawl
    log = crawl.output()
    assert re.search(r"Progress: alameda\.ca/agenda job \d+: \d+/120 rows \(\d+ %\), ", log), log
    ended = summary(log)
    assert len(ended) == 4 and all("completed;" in line and "passed" in line for line in ended)
    assert_exact(guide, "alameda.ca", "berkeley.ca")
    guide.done()


def test_trouble(guide: Guide):
    alameda = guide.site("alameda.ca")
    register(guide.database_url, alameda, guide.site("berkeley.ca"))

    # civic.band's rate limit for callers without the secret, and a crawl without it.
    guide.source.ratelimit(per_minute=1, secret=SECRET)
    limited = guide.sh(
        "scrapy crawl civicband -a subdomain=berkeley.ca -s CIVICBAND_PUBLIC_REQUESTS_PER_MINUTE=0"
        " -s CIVICBAND_RATE_LIMIT_WINDOW=0.1 -s CIVICBAND_RATE_LIMIT_MAX_WAITS=2",
        CIVICBAND_SERVICE_SECRET="",
    )
    assert limited.returncode == 1, limited
    assert "No CIVICBAND_SERVICE_SECRET: public limits" in limited.stderr
    assert limited.lines(r"Rate limited \(HTTP 402\) at .*wait 1 of at most 2")
    errors = {j["last_error"] for j in jobs(guide.database_url, "berkeley.ca")}
    assert any(e and e.startswith("HTTP 402 at ") for e in errors), errors
    guide.source.clear_requests()
    fixed = guide.run("secret", CIVICBAND_SERVICE_SECRET="")  # the block's export sets it
    assert fixed.returncode == 0, fixed
    assert "Service secret set: civic.band at full speed" in fixed.stderr
    assert SECRET not in fixed.stderr
    assert [r for r in guide.source.requests() if r["status"] == 402] == []
    assert_exact(guide, "alameda.ca", "berkeley.ca")
    guide.source.reset()

    # A browser-like user agent meets civic.band's bot wall: HTML at HTTP 200.
    walled = guide.sh(
        "scrapy crawl civicband -a subdomain=alameda.ca -a full=true"
        " -s 'USER_AGENT=Mozilla/5.0 (X11; Linux x86_64)' -s RETRY_TIMES=1"
    )
    assert walled.returncode == 1, walled
    newest = latest(guide.database_url)
    errors = {newest[("alameda.ca", kind)]["last_error"] for kind in TABLES}
    assert all(re.match(r"answer is HTML: '<!doctype html>.* at http", e) for e in errors), errors
    failed = {key: job["id"] for key, job in newest.items()}
    agent, crawl_again = guide.commands("user-agent", 2)
    shown = guide.sh(agent)
    assert shown.stdout.strip() == f"civicband/{__version__} (civic.band PostgreSQL mirror)", shown
    resumed = guide.sh(crawl_again)
    assert resumed.returncode == 0, resumed
    assert {key: job["id"] for key, job in latest(guide.database_url).items()} == failed
    assert_exact(guide, "alameda.ca", "berkeley.ca")

    # A copy that lost pages: verification fails, the listing says why, repair fetches them.
    execute(
        guide.database_url,
        "DELETE FROM meeting_pages WHERE ctid IN (SELECT ctid FROM meeting_pages"
        " WHERE subdomain = 'alameda.ca' AND document_type = 'agenda' ORDER BY id LIMIT 30)",
    )
    guide.source.clear_requests()
    check = guide.run("verify-only")
    assert check.returncode == 1, check
    verdicts = {
        key: (j["mode"], j["status"], j["verify_status"])
        for key, j in latest(guide.database_url).items()
    }
    assert verdicts == {
        ("alameda.ca", "agenda"): ("verify", "failed", "failed"),
        ("alameda.ca", "minutes"): ("verify", "completed", "passed"),
        ("berkeley.ca", "agenda"): ("verify", "completed", "passed"),
        ("berkeley.ca", "minutes"): ("verify", "completed", "passed"),
    }
    assert page_requests(guide.source) == [], "verify_only fetches no page"
    (listing,) = guide.commands("verify-failed", 1)
    failures = guide.sh(listing)
    assert failures.returncode == 0, failures
    assert failures.stdout.splitlines() == [
        "alameda.ca/agenda: Missing 30 pages! Expected 120, got 90"
    ], failures
    guide.source.clear_requests()
    repaired = guide.run("repair")
    assert repaired.returncode == 0, repaired
    job = latest(guide.database_url)[("alameda.ca", "agenda")]
    assert (job["mode"], job["verify_status"], job["pages_created"]) == ("catchup", "passed", 30)
    assert page_requests(guide.source) == [], "repair fetches by id, never pages"
    assert_exact(guide, "alameda.ca", "berkeley.ca")

    # The site caught mid-rebuild: a third of its agendas.
    whole_agendas, whole_minutes = guide.world.rows["alameda.ca"]
    alameda.rebuild(agendas=whole_agendas[:40], minutes=whole_minutes)
    refused = guide.sh("scrapy crawl civicband -a subdomain=alameda.ca")
    assert refused.returncode == 1, refused
    shrink = (
        "Refusing to remove 80 of 120 pages of alameda.ca/agenda: the source holds 40 rows, below"
        " CIVICBAND_SHRINK_GUARD (0.5) of the mirror's (a site caught mid-rebuild?). Nothing was"
        " deleted; run again later, or accept the shrink with -a allow_shrink=true"
    )
    refusal = latest(guide.database_url)[("alameda.ca", "agenda")]
    assert (refusal["status"], refusal["last_error"]) == ("failed", shrink), refusal
    assert shrink in GUIDE.read_text(), "the guide quotes the message as it is"
    assert len(mirrored(guide.database_url, "alameda.ca", "agenda")) == 120
    accepted = guide.run("allow-shrink")
    assert accepted.returncode == 0, accepted
    assert latest(guide.database_url)[("alameda.ca", "agenda")]["pages_removed"] == 80
    assert_exact(guide, "alameda.ca")
    guide.done()


def test_database_trouble(guide: Guide):
    (check,) = guide.commands("db-check", 1)
    down = guide.sh(check, CIVICBAND_DATABASE_URL=UNREACHABLE)
    assert down.returncode == 2, down
    assert down.stderr.startswith(
        "civicband: error: cannot connect to postgresql://civicband:***@127.0.0.1:9/civicband"
    ), down
    assert len(down.stderr.strip().splitlines()) == 1 and "change-me" not in down.stderr, down
    # (The jobs block runs the same command on a database that answers.)

    unreachable = guide.sh(guide.block("exit-codes"), CIVICBAND_DATABASE_URL=UNREACHABLE)
    assert unreachable.stdout.strip() == "bad input or no database: see the error line above"
    errors = unreachable.lines(r"ERROR: ")
    assert len(errors) == 1 and "civicband:***@127.0.0.1:9" in errors[0], unreachable
    assert "change-me" not in unreachable.stderr and "Traceback" not in unreachable.stderr
    assert guide.source.requests() == [], "nothing fetched without a database"
    guide.done()
