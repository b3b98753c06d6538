"""Reference loops for bench/run.py: per-row upsert, fetch-then-COPY, bare fetch."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.request import ProxyHandler, Request, build_opener

import psycopg

from civicband import datasette, db

USER_AGENT = "civicband-bench/1"
DOCUMENT_TYPE = "agenda"
PAGE_SIZE = 1000
_OPENER = build_opener(ProxyHandler({}))


def pages(site_url: str, subdomain: str) -> Iterator[tuple[str | None, list[dict[str, Any]]]]:
    """Every page of the site's agendas, following `next` verbatim as the spider does."""
    root = datasette.site_root(site_url, subdomain)
    headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
    if os.environ.get("CIVICBAND_SERVICE_SECRET"):
        headers["X-Service-Secret"] = os.environ["CIVICBAND_SERVICE_SECRET"]
    cursor: str | None = None
    while True:
        url = datasette.table_url(root, DOCUMENT_TYPE, PAGE_SIZE, cursor)
        with _OPENER.open(Request(url, headers=headers), timeout=120) as response:
            page = json.loads(response.read())
        assert page.get("ok"), page
        cursor = page["next"]
        yield cursor, page["rows"]
        if cursor is None:
            return


def fetch_only(args: argparse.Namespace) -> int:
    """Fetch and parse every page; store nothing."""
    return sum(len(rows) for _, rows in pages(args.site_url, args.subdomain))


def fetch_then_copy(args: argparse.Namespace) -> int:
    """Fetch every page into memory, then one COPY into a plain table (no keys, no upsert)."""
    rows = [row for _, page in pages(args.site_url, args.subdomain) for row in page]
    with psycopg.connect(args.database_url) as conn:
        conn.execute(
            "CREATE TABLE copied_pages (subdomain text, document_type text, id text,"
            " meeting_name text, meeting_date date, page_number integer, text text,"
            " page_image text, entities_json text, votes_json text,"
            " created timestamptz NOT NULL DEFAULT now(),"
            " modified timestamptz NOT NULL DEFAULT now())"
        )
        columns = "subdomain, document_type, id, meeting_name, meeting_date, page_number, text,"
        columns += " page_image, entities_json, votes_json"
        with conn.cursor().copy(f"COPY copied_pages ({columns}) FROM STDIN") as copy:
            for r in rows:
                copy.write_row(
                    (
                        args.subdomain,
                        DOCUMENT_TYPE,
                        r["id"],
                        r["meeting"],
                        dt.date.fromisoformat(r["date"]),
                        r["page"],
                        r["text"],
                        r["page_image"],
                        r["entities_json"],
                        r["votes_json"],
                    )
                )
    return len(rows)


# The original plan's write path (/work/shared/original-plan.md, `run`, `_process_batch`,
# `_get_or_create_document`, `_create_or_update_page`, `_update_checkpoint`), as Django 5.x
# runs it on PostgreSQL, statement for statement, with raw psycopg instead of the ORM.
#
# Django (django/db/models/query.py):
#   update_or_create(defaults, **lookup):
#       with transaction.atomic():                 # nested: SAVEPOINT ... RELEASE SAVEPOINT
#           obj, created = self.select_for_update().get_or_create(defaults, **lookup)
#           if created: return
#           save(update_fields=defaults + every non-pk field whose class overrides pre_save)
#   get_or_create(defaults, **lookup):
#       try: get(**lookup)                          # SELECT <all columns> ... LIMIT 21 FOR UPDATE
#       except DoesNotExist:
#           with transaction.atomic(): create(...)  # SAVEPOINT; INSERT; RELEASE SAVEPOINT
# save(update_fields=...) is one UPDATE ... WHERE pk (save_base opens no savepoint for a model
# without parents); create() is one INSERT, with RETURNING id only for an AutoField pk. Fields
# whose class overrides pre_save are every DateField/DateTimeField: meeting_date and
# TimeStampedModel's created and modified, so a found document is still UPDATEd (meeting_date,
# created, modified) although the plan passes it no defaults.
#
# Per API page, rows grouped by (meeting, date) in first-seen order; per document, in
# autocommit mode (Django's default), so the outermost transaction.atomic() is BEGIN ... COMMIT:
#   BEGIN
#   SAVEPOINT                                            -- update_or_create's atomic()
#   SELECT <document columns> FROM meeting_documents
#    WHERE subdomain AND meeting_name AND meeting_date AND document_type LIMIT 21 FOR UPDATE
#   found:   UPDATE meeting_documents SET meeting_date, created, modified WHERE id
#   missing: SAVEPOINT; INSERT INTO meeting_documents (...) RETURNING id; RELEASE SAVEPOINT
#   RELEASE SAVEPOINT
#   per row of the document:
#     SAVEPOINT                                          -- update_or_create's atomic()
#     SELECT <page columns> FROM meeting_pages WHERE <its key> LIMIT 21 FOR UPDATE
#     found:   UPDATE meeting_pages SET document_id, page_number, text, page_image,
#                                       created, modified WHERE <its key>
#     missing: SAVEPOINT; INSERT INTO meeting_pages (...) (no RETURNING: the key is given);
#              RELEASE SAVEPOINT
#     RELEASE SAVEPOINT
#   COMMIT
# then, per page, `_update_checkpoint`: job.save(update_fields=[...]), one autocommit UPDATE
# of backfill_jobs with the Python-side totals (pages_fetched += batch_size, as the plan has it).
# One round trip per statement. Parameters are bound client-side, as Django 5.x does by default
# on psycopg 3 (ClientCursor) and always on psycopg2. The models are taken to be this schema's
# tables (MeetingPage's key is (subdomain, document_type, id) here), and every statement names
# all their columns, as Django's do. Values follow the plan: its defaults are document,
# page_number, text and page_image, so entities_json and votes_json are inserted NULL and never
# updated; `created` and `modified` are set in Python as TimeStampedModel does. Django's own
# per-query Python cost (query compilation, model instances, signals) is not reproduced, so this
# loop is, if anything, faster than the plan's code.
DOCUMENT_COLUMNS = "id, subdomain, document_type, meeting_name, meeting_date, created, modified"
PAGE_COLUMNS = (
    "subdomain, document_type, id, document_id, page_number, text, page_image,"
    " entities_json, votes_json, created, modified"
)


class Atomic:
    """Django's transaction.atomic() on an autocommit connection: BEGIN/COMMIT, or a savepoint."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        self.depth = 0
        self.counter = 0
        self.prefix = f"s{threading.get_ident()}_x"

    @contextmanager
    def __call__(self) -> Iterator[None]:
        execute = self.conn.execute
        name = None
        if self.depth == 0:
            execute("BEGIN")
        else:
            self.counter += 1
            name = f'"{self.prefix}{self.counter}"'
            execute(f"SAVEPOINT {name}")
        self.depth += 1
        try:
            yield
        except BaseException:
            self.depth -= 1
            execute("ROLLBACK" if name is None else f"ROLLBACK TO SAVEPOINT {name}")
            raise
        self.depth -= 1
        execute("COMMIT" if name is None else f"RELEASE SAVEPOINT {name}")


def per_row(args: argparse.Namespace) -> int:
    """The original plan's `run`: per page `_process_batch`, then `_update_checkpoint`."""
    subdomain, batch_size = args.subdomain, PAGE_SIZE
    total = 0
    job = {"pages_fetched": 0, "pages_created": 0, "pages_updated": 0, "errors": 0}
    with psycopg.connect(
        args.database_url, autocommit=True, cursor_factory=psycopg.ClientCursor
    ) as conn:
        db.migrate(conn)
        atomic = Atomic(conn)
        # What the plan's management command and run() do before the first page.
        conn.execute(
            "INSERT INTO municipalities (subdomain) VALUES (%s) ON CONFLICT DO NOTHING",
            (subdomain,),
        )
        job_row = conn.execute(
            "INSERT INTO backfill_jobs (subdomain, document_type, status, created, modified)"
            " VALUES (%s, %s, 'pending', %s, %s) RETURNING id",
            (subdomain, DOCUMENT_TYPE, now(), now()),
        ).fetchone()
        assert job_row is not None
        job_id = job_row[0]
        conn.execute(
            "UPDATE backfill_jobs SET modified = %s, status = 'running' WHERE id = %s",
            (now(), job_id),
        )
        for cursor, rows in pages(args.site_url, subdomain):
            stats = process_batch(conn, atomic, subdomain, rows)
            # _update_checkpoint: job.save(update_fields=[...]) in autocommit, one UPDATE.
            job["pages_fetched"] += batch_size
            job["pages_created"] += stats["pages_created"]
            job["pages_updated"] += stats["pages_updated"]
            job["errors"] += stats["errors"]
            conn.execute(
                "UPDATE backfill_jobs SET modified = %s, last_cursor = %s, pages_fetched = %s,"
                " pages_created = %s, pages_updated = %s, errors_encountered = %s WHERE id = %s",
                (
                    now(),
                    cursor or "",
                    job["pages_fetched"],
                    job["pages_created"],
                    job["pages_updated"],
                    job["errors"],
                    job_id,
                ),
            )
            total += len(rows)
        conn.execute(
            "UPDATE backfill_jobs SET modified = %s, status = 'completed' WHERE id = %s",
            (now(), job_id),
        )
    return total


def now() -> dt.datetime:
    """django.utils.timezone.now() with USE_TZ: an aware UTC datetime, made in Python."""
    return dt.datetime.now(dt.UTC)


def process_batch(
    conn: psycopg.Connection, atomic: Atomic, subdomain: str, rows: list[dict[str, Any]]
) -> dict[str, int]:
    """The plan's `_process_batch`: group by (meeting, date), one transaction per document."""
    stats = {"pages_created": 0, "pages_updated": 0, "errors": 0}
    documents: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:  # _group_rows_by_document
        meeting_name, date_str = row.get("meeting", ""), row.get("date", "")
        if not meeting_name or not date_str:
            stats["errors"] += 1
            continue
        try:
            dt.date.fromisoformat(date_str)
        except (ValueError, TypeError):
            stats["errors"] += 1
            continue
        documents.setdefault((meeting_name, date_str), []).append(row)
    for (meeting_name, date_str), pages_data in documents.items():
        try:
            with atomic():
                document_id = get_or_create_document(
                    conn, atomic, subdomain, meeting_name, dt.date.fromisoformat(date_str)
                )
                for page_data in pages_data:
                    try:
                        if create_or_update_page(conn, atomic, subdomain, document_id, page_data):
                            stats["pages_created"] += 1
                        else:
                            stats["pages_updated"] += 1
                    except psycopg.Error:
                        stats["errors"] += 1
        except psycopg.Error:
            stats["errors"] += 1
    return stats


def get_or_create_document(
    conn: psycopg.Connection, atomic: Atomic, subdomain: str, meeting_name: str, date: dt.date
) -> int:
    """MeetingDocument.objects.update_or_create(municipality, meeting_name, meeting_date, type)."""
    with atomic():
        found = conn.execute(
            f"SELECT {DOCUMENT_COLUMNS} FROM meeting_documents WHERE subdomain = %s"
            " AND meeting_name = %s AND meeting_date = %s AND document_type = %s"
            " LIMIT 21 FOR UPDATE",
            (subdomain, meeting_name, date, DOCUMENT_TYPE),
        ).fetchall()
        if not found:
            with atomic():
                stamp = now()
                created = conn.execute(
                    "INSERT INTO meeting_documents (subdomain, document_type, meeting_name,"
                    " meeting_date, created, modified) VALUES (%s, %s, %s, %s, %s, %s)"
                    " RETURNING id",
                    (subdomain, DOCUMENT_TYPE, meeting_name, date, stamp, stamp),
                ).fetchone()
                assert created is not None
                return int(created[0])
        document = found[0]
        conn.execute(
            "UPDATE meeting_documents SET meeting_date = %s, created = %s, modified = %s"
            " WHERE id = %s",
            (document[4], document[5], now(), document[0]),
        )
        return int(document[0])


def create_or_update_page(
    conn: psycopg.Connection,
    atomic: Atomic,
    subdomain: str,
    document_id: int,
    page_data: dict[str, Any],
) -> bool:
    """MeetingPage.objects.update_or_create(id=..., defaults={...}); True when created."""
    page_id = page_data.get("id")
    if not page_id:
        raise psycopg.DataError(f"Missing page ID in data: {page_data}")
    page_number = page_data.get("page", 0)
    text = page_data.get("text", "")
    page_image = page_data.get("page_image", "")
    key = (subdomain, DOCUMENT_TYPE, page_id)
    with atomic():
        found = conn.execute(
            f"SELECT {PAGE_COLUMNS} FROM meeting_pages WHERE subdomain = %s"
            " AND document_type = %s AND id = %s LIMIT 21 FOR UPDATE",
            key,
        ).fetchall()
        if not found:
            with atomic():
                stamp = now()
                conn.execute(
                    "INSERT INTO meeting_pages (subdomain, document_type, id, document_id,"
                    " page_number, text, page_image, entities_json, votes_json, created,"
                    " modified) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    (*key, document_id, page_number, text, page_image, None, None, stamp, stamp),
                )
                return True
        conn.execute(
            "UPDATE meeting_pages SET document_id = %s, page_number = %s, text = %s,"
            " page_image = %s, created = %s, modified = %s"
            " WHERE subdomain = %s AND document_type = %s AND id = %s",
            (document_id, page_number, text, page_image, found[0][9], now(), *key),
        )
        return False


KINDS = {"fetch": fetch_only, "copy": fetch_then_copy, "perrow": per_row}


def main() -> None:
    """Run one loop and print `{"rows": N}` as the last line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("kind", choices=sorted(KINDS))
    parser.add_argument("--site-url", required=True, help="e.g. http://127.0.0.1:8001/{subdomain}")
    parser.add_argument("--subdomain", required=True)
    parser.add_argument("--database-url", default="")
    args = parser.parse_args()
    print(json.dumps({"rows": KINDS[args.kind](args)}), flush=True)


if __name__ == "__main__":
    main()
