"""`scrapy changes`: the mirror's change feed as JSON lines, for indexes and alerts downstream."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from collections.abc import Iterator
from typing import Any, TextIO

from psycopg.rows import dict_row

from civicband import db
from civicband.args import ArgumentError
from civicband.command import MirrorCommand, mirror_url
from civicband.commands.jobs import DOCUMENT_TYPES
from civicband.config import check_settings
from civicband.datasette import SUBDOMAIN
from civicband.embedded import EmbeddedPostgresError

# Rows the server-side cursor brings per round trip: memory stays constant however long the feed.
ITERSIZE = 2000
# The keys of each op, in order (SPEC §2).
UPSERT_KEYS = (
    "version",
    "op",
    "subdomain",
    "document_type",
    "id",
    "meeting",
    "date",
    "page",
    "text",
    "page_image",
    "entities_json",
    "votes_json",
    "first_seen",
    "changed",
)
DELETE_KEYS = ("version", "op", "subdomain", "document_type", "id", "removed")


def _whole(name: str, raw: str, low: int) -> int:
    """A whole number of at least `low`, or one line naming the option."""
    text = raw.strip()
    if not (text.isascii() and text.isdigit()) or int(text) < low:
        raise ArgumentError(f"{name}: expected a whole number from {low} up, got {raw!r}")
    return int(text)


def parse_options(opts: argparse.Namespace) -> dict[str, Any]:
    """The options as query parameters; a bad one is one line naming it."""
    if opts.since is None:
        raise ArgumentError("--since: required: the last version you read (0 for everything)")
    since = _whole("--since", opts.since, 0)
    document_type = opts.document_type.strip().lower() if opts.document_type is not None else None
    if document_type is not None and document_type not in DOCUMENT_TYPES:
        raise ArgumentError(f"--type: must be agenda or minutes, got {opts.document_type!r}")
    subdomain = opts.subdomain.strip().lower() if opts.subdomain is not None else None
    if subdomain is not None and not SUBDOMAIN.fullmatch(subdomain):
        raise ArgumentError(
            f"--subdomain: {opts.subdomain!r} is not a civic.band subdomain (e.g. oakland.ca)"
        )
    limit = _whole("--limit", opts.limit, 1) if opts.limit is not None else None
    return {"since": since, "subdomain": subdomain, "document_type": document_type, "limit": limit}


def as_line(row: dict[str, Any]) -> str:
    """One change as a JSON object: an upsert with the page, or a delete with its key."""

    def value(item: Any) -> Any:
        return item.isoformat() if isinstance(item, datetime.date) else item

    keys = UPSERT_KEYS if row["op"] == "upsert" else DELETE_KEYS
    return json.dumps({key: value(row[key]) for key in keys}, ensure_ascii=False)


def stream_changes(url: str, params: dict[str, Any], timeout: float) -> Iterator[dict[str, Any]]:
    """Every change above `since`, in version order, read from one snapshot.

    One statement is one snapshot, and versions are taken in commit order (the versions lock,
    civicband/mirror.py): what it shows up to its last version is every change up to there.
    """
    with (
        db.connect(url, timeout=timeout) as conn,
        db.wrap_exceptions(f"cannot read changes from {db.redact(url)}"),
    ):
        db.migrate(conn)
        with conn.transaction(), conn.cursor("civicband_changes", row_factory=dict_row) as cur:
            cur.itersize = ITERSIZE
            cur.execute(db.query("changes"), params)
            yield from cur


def write_changes(rows: Iterator[dict[str, Any]], out: TextIO) -> int:
    """Print each change on its own line as it comes; how many were printed."""
    printed = 0
    for row in rows:
        out.write(as_line(row) + "\n")
        printed += 1
    out.flush()
    return printed


class Command(MirrorCommand):
    """Print the mirror's changes since a version, from the same database the crawl uses."""

    def syntax(self) -> str:
        """Shown by `scrapy changes -h`."""
        return "--since V [--subdomain X] [--type agenda|minutes] [--limit N]"

    def short_desc(self) -> str:
        """Shown by `scrapy -h`."""
        return "Print page changes since a version, as JSON lines"

    def long_desc(self) -> str:
        """Shown by `scrapy changes -h`."""
        return (
            "Print one JSON object per line, in ascending version order, for every page whose"
            " newest change is above --since: op upsert (the page as the mirror holds it) or"
            " delete (its key). Store the last version you read and ask again from there."
        )

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        """Scrapy's global options plus the feed's; values are checked in run() (one line)."""
        super().add_options(parser)
        parser.add_argument("--since", metavar="V", help="the last version read (0: everything)")
        parser.add_argument("--subdomain", metavar="X", help="only this site's pages")
        parser.add_argument(
            "--type", dest="document_type", metavar="TYPE", help="only agenda or minutes pages"
        )
        parser.add_argument("--limit", metavar="N", help="at most N changes (the oldest)")

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        """Print the changes; bad options or no database: one line on stderr and exit status 2."""
        assert self.settings is not None
        try:
            if args:
                what = "option" if args[0].startswith("-") else "argument"
                raise ArgumentError(f"unknown {what} {args[0]!r} (see scrapy changes -h)")
            params = parse_options(opts)
            check_settings(self.settings)
        except ArgumentError as error:
            self._error(str(error))
            return
        timeout = self.settings.getfloat("CIVICBAND_DB_TIMEOUT")
        try:
            with mirror_url(self.settings) as url:
                write_changes(stream_changes(url, params, timeout), sys.stdout)
        except BrokenPipeError:
            # The reader had enough (`| head`): stop quietly, as Unix tools do; what Python
            # would still flush at exit goes nowhere instead of raising again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (db.DatabaseError, EmbeddedPostgresError) as error:
            self._error(str(error))
