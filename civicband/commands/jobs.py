"""`scrapy jobs`: the backfill_jobs table as an admin list, or as JSON for scripts."""

from __future__ import annotations

import argparse
import datetime
import json
from typing import Any

from psycopg.rows import dict_row

from civicband import db
from civicband.args import ArgumentError
from civicband.command import MirrorCommand, mirror_url
from civicband.config import check_settings
from civicband.datasette import SUBDOMAIN
from civicband.embedded import EmbeddedPostgresError

STATUSES = ("pending", "running", "completed", "failed", "paused")
DOCUMENT_TYPES = ("agenda", "minutes")
# SPEC §2's columns, plus the job's mode (full, catchup or verify), the pages it changed,
# restored (back from their tombstones) and removed,
# verify_status (why a job passed, warned or failed verification), stale_count (pages out of
# date) and verify_method (digest, or exact: which check judged it).
COLUMNS = (
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
)
NUMERIC = {
    "id",
    "pages_created",
    "pages_updated",
    "pages_changed",
    "pages_restored",
    "pages_removed",
    "errors_encountered",
    "expected_count",
    "actual_count",
    "stale_count",
}
# The table is for reading: long errors are cut (--json has them whole).
ERROR_WIDTH = 80


def parse_filters(opts: argparse.Namespace) -> dict[str, Any]:
    """The options as query parameters; a bad one is one line naming it."""
    status = opts.status.strip().lower() if opts.status is not None else None
    if status is not None and status not in STATUSES:
        raise ArgumentError(f"--status: must be one of {', '.join(STATUSES)}, got {opts.status!r}")
    document_type = opts.document_type.strip().lower() if opts.document_type is not None else None
    if document_type is not None and document_type not in DOCUMENT_TYPES:
        raise ArgumentError(f"--type: must be agenda or minutes, got {opts.document_type!r}")
    subdomain = opts.subdomain.strip().lower() if opts.subdomain is not None else None
    if subdomain is not None and not SUBDOMAIN.fullmatch(subdomain):
        raise ArgumentError(
            f"--subdomain: {opts.subdomain!r} is not a civic.band subdomain (e.g. oakland.ca)"
        )
    limit = None
    if opts.limit is not None:
        text = opts.limit.strip()
        if not (text.isascii() and text.isdigit()) or int(text) < 1:
            raise ArgumentError(f"--limit: expected a whole number above 0, got {opts.limit!r}")
        limit = int(text)
    return {
        "status": status,
        "document_type": document_type,
        "subdomain": subdomain,
        "limit": limit,
    }


def fetch_jobs(url: str, filters: dict[str, Any], timeout: float) -> list[dict[str, Any]]:
    """Bring the schema up to date (a fresh database has no jobs table yet), then list jobs."""
    with (
        db.connect(url, timeout=timeout) as conn,
        db.wrap_exceptions(f"cannot read jobs from {db.redact(url)}"),
    ):
        db.migrate(conn)
        return conn.cursor(row_factory=dict_row).execute(db.query("list_jobs"), filters).fetchall()


def as_json(rows: list[dict[str, Any]]) -> str:
    """A JSON list of objects, keys in COLUMNS order, timestamps in ISO 8601."""

    def value(item: Any) -> Any:
        return item.isoformat() if isinstance(item, datetime.datetime) else item

    return json.dumps([{c: value(row[c]) for c in COLUMNS} for row in rows], indent=2)


def _cell(column: str, item: Any) -> str:
    """One value as the table shows it: '-' for NULL, seconds precision, errors on one line."""
    if item is None:
        return "-"
    if isinstance(item, datetime.datetime):
        return item.isoformat(sep=" ", timespec="seconds")
    text = " ".join(str(item).split())
    if column == "last_error" and len(text) > ERROR_WIDTH:
        return text[: ERROR_WIDTH - 3] + "..."
    return text


def as_table(rows: list[dict[str, Any]]) -> str:
    """Aligned columns, numbers to the right, one job a line, with a count at the end."""
    if not rows:
        return "No jobs."
    cells = [[_cell(c, row[c]) for c in COLUMNS] for row in rows]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(COLUMNS)]

    def line(values: list[str]) -> str:
        parts = [
            v.rjust(w) if c in NUMERIC else v.ljust(w)
            for c, v, w in zip(COLUMNS, values, widths, strict=True)
        ]
        return "  ".join(parts).rstrip()

    out = [line(list(COLUMNS)), line(["-" * w for w in widths])]
    out += [line(values) for values in cells]
    out.append(f"({len(rows)} job{'' if len(rows) == 1 else 's'})")
    return "\n".join(out)


class Command(MirrorCommand):
    """List backfill jobs between runs, from the same database the crawl uses."""

    def syntax(self) -> str:
        """Shown by `scrapy jobs -h`."""
        return "[--status S] [--type agenda|minutes] [--subdomain X] [--limit N] [--json]"

    def short_desc(self) -> str:
        """Shown by `scrapy -h`."""
        return "List backfill jobs, newest first"

    def long_desc(self) -> str:
        """Shown by `scrapy jobs -h`."""
        return (
            "List backfill jobs, newest first, from CIVICBAND_DATABASE_URL or the embedded"
            " PostgreSQL (connecting within CIVICBAND_DB_TIMEOUT). Filters combine; --json"
            " prints a JSON list of objects."
        )

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        """Scrapy's global options plus the filters; values are checked in run() (one line)."""
        super().add_options(parser)
        parser.add_argument(
            "--status", metavar="S", help=f"only jobs in this status ({', '.join(STATUSES)})"
        )
        parser.add_argument(
            "--type", dest="document_type", metavar="TYPE", help="only agenda or minutes jobs"
        )
        parser.add_argument("--subdomain", metavar="X", help="only this site's jobs")
        parser.add_argument("--limit", metavar="N", help="at most N jobs (the newest)")
        parser.add_argument(
            "--json", dest="as_json", action="store_true", help="print a JSON list of objects"
        )

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        """Print the jobs; bad options or no database: one line on stderr and exit status 2."""
        assert self.settings is not None
        try:
            if args:
                what = "option" if args[0].startswith("-") else "argument"
                raise ArgumentError(f"unknown {what} {args[0]!r} (see scrapy jobs -h)")
            filters = parse_filters(opts)
            check_settings(self.settings)
        except ArgumentError as error:
            self._error(str(error))
            return
        timeout = self.settings.getfloat("CIVICBAND_DB_TIMEOUT")
        try:
            with mirror_url(self.settings) as url:
                rows = fetch_jobs(url, filters, timeout)
        except (db.DatabaseError, EmbeddedPostgresError) as error:
            self._error(str(error))
            return
        print(as_json(rows) if opts.as_json else as_table(rows))
