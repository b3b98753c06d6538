"""Shared helpers of the end-to-end tests: run the real `scrapy crawl`, read back what it did."""

from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import psycopg
from psycopg.rows import dict_row

from civicband import db

ROOT = Path(__file__).resolve().parents[2]
SECRET = "test-secret-do-not-log"
TABLES = {"agenda": "agendas", "minutes": "minutes"}
COLUMNS = ("id", "meeting", "date", "page", "text", "page_image", "entities_json", "votes_json")
TEXT_COLUMNS = ("meeting", "text", "page_image", "entities_json", "votes_json")
# The columns `scrapy jobs --json` lists, in order (SPEC §2 plus mode, pages_changed,
# pages_restored and pages_removed).
JOB_KEYS = [
    "id",
    "subdomain",
    "document_type",
    "mode",
    "status",
    "pages_created",
    "pages_updated",
    "pages_changed",
    "pages_restored",
    "pages_removed",
    "errors_encountered",
    "expected_count",
    "actual_count",
    "stale_count",
    "verify_status",
    "verify_method",
    "verified_at",
    "created",
    "modified",
    "last_error",
]


def read_stats(path: Path) -> dict[str, Any]:
    """The final stats a crawl wrote (CIVICBAND_STATS_FILE), as data."""
    assert path.exists(), f"the crawl wrote no stats file at {path}"
    return json.loads(path.read_text())


@dataclass
class CrawlResult:
    """Exit status, output and the final stats of one crawl."""

    returncode: int
    stdout: str
    stderr: str
    stats_path: Path

    @property
    def stats(self) -> dict[str, Any]:
        """The final stats (written by civicband.extensions.statsfile)."""
        return read_stats(self.stats_path)

    def lines(self, pattern: str) -> list[str]:
        """Log lines matching a regular expression."""
        return [line for line in self.stderr.splitlines() if re.search(pattern, line)]

    def __str__(self) -> str:
        return f"exit {self.returncode}\n--- stderr ---\n{self.stderr[-6000:]}"

    __repr__ = __str__


class Background:
    """A crawl running in the background, its output in a file."""

    def __init__(self, process: subprocess.Popen, log: Path, stats_path: Path) -> None:
        self.process = process
        self.log = log
        self.stats_path = stats_path

    def wait(self, timeout: float = 180) -> int:
        """Its exit status."""
        return self.process.wait(timeout=timeout)

    @property
    def stats(self) -> dict[str, Any]:
        """Its final stats, once it has ended."""
        return read_stats(self.stats_path)

    def output(self) -> str:
        """What it logged so far."""
        return self.log.read_text(errors="replace")

    def __str__(self) -> str:
        return f"exit {self.process.poll()}\n--- log ---\n{self.output()[-6000:]}"

    __repr__ = __str__


_runs = iter(range(10**9))
_STATS = Path(tempfile.mkdtemp(prefix="civicband-stats-"))


def _stats_path(stats_dir: Path | None) -> Path:
    return (stats_dir or _STATS) / f"stats-{next(_runs)}.json"


def crawl_command(
    database_url: str,
    source: Any,
    *args: str,
    spider: str = "civicband",
    settings: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    stats_path: Path | None = None,
    python: list[str] | None = None,
) -> tuple[list[str], dict[str, str]]:
    """The argv and environment of a `scrapy crawl` against the look-alike."""
    command = [*(python or [sys.executable]), "-m", "scrapy", "crawl", spider]
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
        **({"CIVICBAND_STATS_FILE": str(stats_path)} if stats_path else {}),
        **(settings or {}),
    }
    for name, value in merged.items():
        command += ["-s", f"{name}={value}"]
    return command, {**os.environ, "CIVICBAND_DATABASE_URL": database_url, **(env or {})}


def start_crawl(database_url: str, source: Any, *args: str, log: Path, **kwargs: Any) -> Background:
    """Start a crawl in the background, its output going to a file."""
    stats_path = _stats_path(log.parent)
    start_new_session = kwargs.pop("start_new_session", False)
    command, full_env = crawl_command(database_url, source, *args, stats_path=stats_path, **kwargs)
    with log.open("w") as output:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=full_env,
            stdout=output,
            stderr=output,
            start_new_session=start_new_session,
        )
    return Background(process, log, stats_path)


def wait_for(condition: Any, *, timeout: float = 60, what: str = "a condition") -> Any:
    """Poll a condition until it holds (a bounded readiness loop, never a fixed sleep)."""
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
    timeout: float = 180,
    **kwargs: Any,
) -> CrawlResult:
    """`scrapy crawl` against the look-alike, arguments given as 'name=value'."""
    stats_path = _stats_path(None)
    command, full_env = crawl_command(database_url, source, *args, stats_path=stats_path, **kwargs)
    done = subprocess.run(
        command, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout
    )
    return CrawlResult(done.returncode, done.stdout, done.stderr, stats_path)


def fetch(database_url: str, sql: str, params: Any = None) -> list[dict[str, Any]]:
    """Rows of a query on the mirror, as dicts."""
    with psycopg.connect(database_url, row_factory=dict_row) as conn:
        return conn.execute(sql, params).fetchall()


def execute(database_url: str, sql: str, params: Any = None) -> int:
    """Change the mirror directly (a test's set-up); returns the rows changed."""
    with psycopg.connect(database_url) as conn:
        return conn.execute(sql, params).rowcount


def register(database_url: str, *sites: Any) -> None:
    """Put sites into municipalities (as civicband-sites would), so no probe is needed."""
    with db.connect(database_url, timeout=10) as conn:
        db.migrate(conn)
        with conn.transaction():
            for site in sites:
                conn.execute(
                    "INSERT INTO municipalities (subdomain) VALUES (%s) ON CONFLICT DO NOTHING",
                    [site.subdomain],
                )


def backfilled(database_url: str, source: Any, **kwargs: Any) -> Any:
    """A site the mirror holds a completed pass of."""
    site = source.create_site(**kwargs)
    register(database_url, site)
    result = crawl(database_url, source, f"subdomain={site.subdomain}")
    assert result.returncode == 0, result
    return site


def mirrored(database_url: str, subdomain: str, document_type: str) -> dict[str, dict[str, Any]]:
    """The mirror's rows of one (site, type), shaped like the source's, by id: all 8 columns."""
    rows = fetch(
        database_url,
        "SELECT p.id, d.meeting_name AS meeting, to_char(d.meeting_date, 'YYYY-MM-DD') AS date,"
        " p.page_number AS page, p.text, p.page_image, p.entities_json, p.votes_json"
        " FROM meeting_pages p JOIN meeting_documents d ON d.id = p.document_id"
        " WHERE p.subdomain = %s AND p.document_type = %s",
        [subdomain, document_type],
    )
    return {row["id"]: row for row in rows}


def _stored_form(value: Any) -> Any:
    # PostgreSQL text cannot hold NUL: the mirror removes it (and counts it).
    return value.replace("\x00", "") if isinstance(value, str) else value


def expected(site: Any, table: str, *, valid_only: bool = True) -> dict[str, dict[str, Any]]:
    """What the mirror must hold of a source table: every column, NULs removed, by id.

    Rows the mirror rejects by design (no id, meeting or valid date) are left out when
    `valid_only`; they belong in rejected_rows instead.
    """
    out = {}
    for row in site.rows(table):
        shaped = {c: _stored_form(row.get(c)) if c in TEXT_COLUMNS else row.get(c) for c in COLUMNS}
        if valid_only and not _storable(row):
            continue
        out[row["id"]] = shaped
    return out


def _storable(row: dict[str, Any]) -> bool:
    date, row_id = row.get("date"), row.get("id")
    meeting = _stored_form(row.get("meeting"))
    return (
        isinstance(row_id, str)
        and bool(row_id.strip())
        and row_id == row_id.strip()
        and "\x00" not in row_id
        and len(row_id) <= 200
        and isinstance(meeting, str)
        and bool(meeting.strip())
        and isinstance(date, str)
        and re.fullmatch(r"\d{4}-\d{2}-\d{2}", date) is not None
        and _valid_date(date)
    )


def _valid_date(text: str) -> bool:
    try:
        datetime.date.fromisoformat(text)
    except ValueError:
        return False
    return True


def assert_mirror_equals_source(
    database_url: str, site: Any, document_types: tuple[str, ...] = ("agenda", "minutes")
) -> int:
    """Every stored row equals its source row in all eight columns, and nothing else is stored.

    Returns how many rows were compared; comparing nothing proves nothing, so that fails.
    """
    compared = 0
    for document_type in document_types:
        source_rows = expected(site, TABLES[document_type])
        stored = mirrored(database_url, site.subdomain, document_type)
        assert stored.keys() == source_rows.keys(), (
            f"{site.subdomain}/{document_type}: missing {sorted(source_rows.keys() - stored)[:5]},"
            f" extra {sorted(stored.keys() - source_rows)[:5]}"
        )
        for row_id, row in source_rows.items():
            assert stored[row_id] == row, (site.subdomain, document_type, row_id)
        compared += len(source_rows)
    assert compared, "a comparison of nothing proves nothing"
    return compared


def jobs(database_url: str, subdomain: str | None = None) -> list[dict[str, Any]]:
    """backfill_jobs rows, oldest first."""
    if subdomain is None:
        return fetch(database_url, "SELECT * FROM backfill_jobs ORDER BY id")
    return fetch(
        database_url, "SELECT * FROM backfill_jobs WHERE subdomain = %s ORDER BY id", [subdomain]
    )


def assert_jobs_complete_and_exact(
    database_url: str, site: Any, *, created: bool = True, document_types: tuple[str, ...] = ()
) -> None:
    """Every job of the site completed, verified passed, with exact counters."""
    types = document_types or tuple(t for t, table in TABLES.items() if site.rows(table))
    assert_mirror_equals_source(database_url, site, types)
    for job in jobs(database_url, site.subdomain):
        if job["document_type"] not in types:
            continue
        total = len(site.rows(TABLES[job["document_type"]]))
        assert job["status"] == "completed", job
        assert job["verify_status"] == "passed", job
        assert (job["pages_fetched"], job["pages_created"], job["pages_updated"]) == (
            total,
            total if created else 0,
            0 if created else total,
        ), job


def committed(database_url: str, subdomain: str) -> int:
    """Pages committed so far by the site's jobs (0 before the schema exists)."""
    try:
        rows = fetch(
            database_url,
            "SELECT coalesce(max(batches_committed), 0) AS n FROM backfill_jobs"
            " WHERE subdomain = %s",
            [subdomain],
        )
    except psycopg.errors.UndefinedTable:
        return 0
    return rows[0]["n"]


def page_requests(source: Any, subdomain: str | None = None) -> list[dict[str, Any]]:
    """Table-page requests the look-alike saw (not SQL, not probes), in arrival order."""
    found = [
        r
        for r in source.requests()
        if re.search(r"/meetings/(agendas|minutes)\.json$", r["path"])
        and (subdomain is None or r["path"].startswith(f"/{subdomain}/"))
    ]
    return sorted(found, key=lambda r: r["time"])


def sql_requests(source: Any, subdomain: str | None = None) -> list[dict[str, Any]]:
    """SQL requests the look-alike saw, in arrival order."""
    found = [
        r
        for r in source.requests()
        if "sql=" in r["query"] and (subdomain is None or r["path"].startswith(f"/{subdomain}/"))
    ]
    return sorted(found, key=lambda r: r["time"])


def sql_of(request: dict[str, Any]) -> str:
    """The SQL a logged request asked, decoded (empty for a table page)."""
    return parse_qs(request["query"]).get("sql", [""])[0]


def is_digest(request: dict[str, Any]) -> bool:
    """A digest request (civicband.digest.digest_sql)."""
    return "group by tag,bucket" in sql_of(request)


def bisection_depths(request: dict[str, Any]) -> dict[str, int]:
    """Per table tag, the depth a bisection request asks its buckets at (bisect.bisect_sql)."""
    query = parse_qs(request["query"])
    return {k[: -len("_d")]: int(v[0]) for k, v in query.items() if k.endswith("_d")}


def asked_buckets(request: dict[str, Any]) -> dict[str, list[str]]:
    """Per table tag, the buckets a bisection request asks (bisect.bisect_sql)."""
    query = parse_qs(request["query"], keep_blank_values=True)
    return {tag: query.get(tag, [""])[0].split(".") for tag in bisection_depths(request)}


def is_bisection(request: dict[str, Any]) -> bool:
    """Sub-bucket digests or listings, packed a bucket a row (civicband.bisect.bisect_sql)."""
    return "as packed" in sql_of(request)


def is_listing(request: dict[str, Any]) -> bool:
    """A bisection request that lists ids (depth 12) for some table."""
    return is_bisection(request) and 12 in bisection_depths(request).values()


def is_by_id(request: dict[str, Any]) -> bool:
    """A fetch of rows by id, whole or their values (civicband.bisect.fetch_sql)."""
    query = parse_qs(request["query"])
    return any(k.endswith(("_w", "_v")) for k in query) and "json_each" in sql_of(request)


def is_count(request: dict[str, Any]) -> bool:
    """A count of a table (the source's count taken when a full pass starts)."""
    return "count(*) as n from" in sql_of(request) and not is_digest(request)


def change_in_place(site: Any, table: str, ids: list[str], **values: Any) -> None:
    """Re-extraction at the source: the same ids, new values in columns the id does not hash."""
    rows = {row["id"]: row for row in site.rows(table)}
    site.delete_rows(table, ids)
    site.add_rows(table, [{**rows[i], **values} for i in ids])
