"""Run the real `scrapy crawl` in a subprocess and read back what it did."""

from __future__ import annotations

import datetime
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

ROOT = Path(__file__).resolve().parents[2]
SECRET = "test-secret-do-not-log"


@dataclass
class CrawlResult:
    """Exit status, output and the stats Scrapy dumped at the end."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def stats(self) -> dict[str, Any]:
        """The final stats dump, parsed."""
        match = re.search(r"Dumping Scrapy stats:\n(\{.*?\})\n\d{4}-", self.stderr, re.S)
        assert match, f"no stats dump in output:\n{self.stderr[-3000:]}"
        return eval(match.group(1), {"datetime": datetime})  # noqa: S307 - our own log

    def __str__(self) -> str:
        return f"exit {self.returncode}\n--- stderr ---\n{self.stderr[-6000:]}"


def crawl_command(
    database_url: str,
    source: Any,
    *args: str,
    spider: str = "civicband",
    settings: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
) -> tuple[list[str], dict[str, str]]:
    """The argv and environment of a `scrapy crawl` against the look-alike."""
    command = [sys.executable, "-m", "scrapy", "crawl", spider]
    for arg in args:
        command += ["-a", arg]
    merged = {
        "CIVICBAND_SITE_URL": source.site_url
        if source is not None
        else "http://127.0.0.1:9/{subdomain}",
        "CIVICBAND_INDEX_URL": source.index_url if source is not None else "http://127.0.0.1:9/",
        "CIVICBAND_SERVICE_SECRET": SECRET,
        "LOG_LEVEL": "INFO",
        # Real backoff, shortened: tests that measure it set their own.
        "CIVICBAND_BACKOFF_BASE": 0.2,
        "CIVICBAND_BACKOFF_MAX": 2,
        **(settings or {}),
    }
    for name, value in merged.items():
        command += ["-s", f"{name}={value}"]
    return command, {**os.environ, "CIVICBAND_DATABASE_URL": database_url, **(env or {})}


def start_crawl(
    database_url: str, source: Any, *args: str, log: Path, **kwargs: Any
) -> subprocess.Popen:
    """Start a crawl in the background, its output going to a file."""
    command, full_env = crawl_command(database_url, source, *args, **kwargs)
    with log.open("w") as output:
        return subprocess.Popen(command, cwd=ROOT, env=full_env, stdout=output, stderr=output)


def wait_for(condition: Any, *, timeout: float = 60, what: str = "a condition") -> Any:
    """Poll a condition until it holds (a bounded readiness loop, not a fixed sleep)."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def crawl(
    database_url: str,
    source: Any,
    *args: str,
    spider: str = "civicband",
    settings: dict[str, Any] | None = None,
    timeout: float = 180,
    env: dict[str, str] | None = None,
) -> CrawlResult:
    """`scrapy crawl` against the look-alike, arguments given as 'name=value'."""
    command, full_env = crawl_command(
        database_url, source, *args, spider=spider, settings=settings, env=env
    )
    done = subprocess.run(
        command, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout
    )
    return CrawlResult(done.returncode, done.stdout, done.stderr)


def fetch(database_url: str, sql: str, params: Any = None) -> list[dict[str, Any]]:
    """Rows of a query on the mirror, as dicts."""
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        return conn.execute(sql, params).fetchall()


def mirrored(database_url: str, subdomain: str, document_type: str) -> dict[str, dict[str, Any]]:
    """The mirror's rows of one (site, type), shaped like the source's, by id."""
    rows = fetch(
        database_url,
        "SELECT p.id, d.meeting_name AS meeting, to_char(d.meeting_date, 'YYYY-MM-DD') AS date,"
        " p.page_number AS page, p.text, p.page_image, p.entities_json, p.votes_json"
        " FROM meeting_pages p JOIN meeting_documents d ON d.id = p.document_id"
        " WHERE p.subdomain = %s AND p.document_type = %s",
        [subdomain, document_type],
    )
    return {row["id"]: row for row in rows}


def expected(site: Any, table: str) -> dict[str, dict[str, Any]]:
    """The source's rows of one table, by id, with every column the mirror keeps."""
    columns = ("id", "meeting", "date", "page", "text", "page_image", "entities_json", "votes_json")
    return {row["id"]: {c: row.get(c) for c in columns} for row in site.rows(table)}


def jobs(database_url: str, subdomain: str | None = None) -> list[dict[str, Any]]:
    """backfill_jobs rows, oldest first."""
    if subdomain is None:
        return fetch(database_url, "SELECT * FROM backfill_jobs ORDER BY id")
    return fetch(
        database_url, "SELECT * FROM backfill_jobs WHERE subdomain = %s ORDER BY id", [subdomain]
    )
