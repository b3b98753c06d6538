"""End to end: `scrapy jobs` lists the jobs a real crawl left, as a table or as JSON."""

from __future__ import annotations

import datetime
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest

from tests.e2e.crawl import JOB_KEYS, ROOT, crawl, fetch

TIMESTAMPS = ("verified_at", "created", "modified")


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str

    def __str__(self) -> str:
        return (
            f"exit {self.returncode}\n--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"
        )

    def json(self) -> list[dict[str, Any]]:
        assert self.returncode == 0, self
        return json.loads(self.stdout)


def scrapy_jobs(database_url: str, *options: str) -> Run:
    """The real command in a subprocess, pointed at one database through the environment."""
    env = {**os.environ, "CIVICBAND_DATABASE_URL": database_url}
    done = subprocess.run(
        [sys.executable, "-m", "scrapy", "jobs", *options],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return Run(done.returncode, done.stdout, done.stderr)


@pytest.mark.datasette("ds10")  # the jobs table is the same whatever Datasette line filled it
def test_jobs_lists_newest_first_as_a_table_and_as_json_and_filters(database_url, source):
    first = source.create_site(agendas=12, minutes=5)
    second = source.create_site(agendas=4, minutes=3)
    # A fresh database: the command applies the schema and lists nothing.
    empty = scrapy_jobs(database_url)
    assert (empty.returncode, empty.stdout) == (0, "No jobs.\n"), empty
    for site in (first, second):
        fetch(
            database_url,
            "INSERT INTO municipalities (subdomain) VALUES (%s) RETURNING 1",
            [site.subdomain],
        )
    source.faults.add(match=f"/{second.subdomain}/meetings/minutes", action="status", status=403)
    result = crawl(database_url, source, f"subdomain={first.subdomain},{second.subdomain}")
    assert result.returncode == 1, result
    in_db = fetch(database_url, "SELECT * FROM backfill_jobs ORDER BY id DESC")
    assert len(in_db) == 4
    # Four read-only listings of the same jobs, run side by side: each is a Python start-up.
    with ThreadPoolExecutor(4) as pool:
        table, as_json, only_failed, minutes = pool.map(
            lambda options: scrapy_jobs(database_url, *options),
            [
                (),
                ("--json",),
                ("--status", "failed", "--limit", "1", "--json"),
                ("--type=minutes", "--subdomain", first.subdomain, "--json"),
            ],
        )

    assert table.returncode == 0, table
    lines = table.stdout.splitlines()
    assert lines[0].split() == JOB_KEYS
    assert set(lines[1]) == {"-", " "}
    rows = lines[2:-1]
    assert [int(line.split()[0]) for line in rows] == [job["id"] for job in in_db]
    assert lines[-1] == "(4 jobs)"
    (failed,) = [line for line in rows if "HTTP 403" in line]
    assert failed.split()[1:5] == [second.subdomain, "minutes", "full", "failed"]
    assert table.stderr == ""

    listed = as_json.json()
    assert [list(job) for job in listed] == [JOB_KEYS] * 4
    for job, row in zip(listed, in_db, strict=True):
        for key in JOB_KEYS:
            value = job[key]
            if key in TIMESTAMPS and value is not None:
                value = datetime.datetime.fromisoformat(value)
            assert value == row[key], key
    completed = next(job for job in listed if job["status"] == "completed")
    assert completed["verify_status"] == "passed" and completed["verified_at"]

    (only,) = only_failed.json()
    assert (only["subdomain"], only["document_type"]) == (second.subdomain, "minutes")
    assert "HTTP 403" in only["last_error"]
    assert [(j["subdomain"], j["document_type"]) for j in minutes.json()] == [
        (first.subdomain, "minutes")
    ]


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (["--status", "done"], "--status:"),
        (["--subdomain", "https://evil.example/x"], "--subdomain:"),
        (["-s", "CIVICBAND_DB_TIMEOUT=soon"], "CIVICBAND_DB_TIMEOUT:"),
    ],
)
def test_bad_options_exit_2_with_one_line(options, named):
    # A database that does not exist: options are checked before any connection.
    run = scrapy_jobs("postgresql://mirror:hunter2@127.0.0.1:9/civicband", *options)
    assert run.returncode == 2, run
    assert run.stdout == ""
    (line,) = run.stderr.splitlines()
    assert line.startswith(f"civicband: error: {named}"), line


def test_unreachable_database_exits_2_with_one_line_without_the_password():
    run = scrapy_jobs("postgresql://mirror:hunter2@127.0.0.1:9/civicband")
    assert run.returncode == 2, run
    (line,) = run.stderr.splitlines()
    assert "mirror:***@127.0.0.1:9" in line
    assert "hunter2" not in run.stderr


def test_connecting_is_bounded_by_the_timeout_setting():
    # A server that accepts the connection and never answers: libpq waits connect_timeout.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"postgresql://mirror@127.0.0.1:{listener.getsockname()[1]}/civicband"
        started = time.monotonic()
        run = scrapy_jobs(url, "-s", "CIVICBAND_DB_TIMEOUT=2")
        took = time.monotonic() - started
    assert run.returncode == 2, run
    (line,) = run.stderr.splitlines()
    assert line.startswith("civicband: error: cannot connect to postgresql://mirror@127.0.0.1:")
    assert took < 9, f"{took:.1f} s: not bounded by CIVICBAND_DB_TIMEOUT=2 (the old fixed 10 s?)"
