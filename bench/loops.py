"""Reference loops for bench/run.py: per-row upsert, fetch-then-COPY, bare fetch."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
from collections.abc import Iterator
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


def per_row(args: argparse.Namespace) -> int:
    """The original plan: per row SELECT then INSERT or UPDATE, documents got-or-created."""
    key = {"subdomain": args.subdomain, "document_type": DOCUMENT_TYPE}
    total = 0
    with psycopg.connect(args.database_url) as conn:
        db.migrate(conn)
        with conn.transaction():
            conn.execute(
                "INSERT INTO municipalities (subdomain) VALUES (%(subdomain)s)"
                " ON CONFLICT DO NOTHING",
                key,
            )
            job = conn.execute(
                "INSERT INTO backfill_jobs (subdomain, document_type, status)"
                " VALUES (%(subdomain)s, %(document_type)s, 'running') RETURNING id",
                key,
            ).fetchone()
        assert job is not None
        for cursor, rows in pages(args.site_url, args.subdomain):
            with conn.transaction():
                created = 0
                for r in rows:
                    created += store_row(conn, key, r)
                conn.execute(
                    "UPDATE backfill_jobs SET last_cursor = %s, pages_fetched = pages_fetched + %s,"
                    " pages_created = pages_created + %s, pages_updated = pages_updated + %s,"
                    " modified = now() WHERE id = %s",
                    (cursor, len(rows), created, len(rows) - created, job[0]),
                )
            total += len(rows)
        with conn.transaction():
            conn.execute("UPDATE backfill_jobs SET status = 'completed' WHERE id = %s", job)
    return total


def store_row(conn: psycopg.Connection, key: dict[str, str], r: dict[str, Any]) -> int:
    """One row, one statement per round trip; 1 when the page was new."""
    date = dt.date.fromisoformat(r["date"])
    meeting = {**key, "meeting_name": r["meeting"], "meeting_date": date}
    found = conn.execute(
        "SELECT id FROM meeting_documents WHERE subdomain = %(subdomain)s"
        " AND document_type = %(document_type)s AND meeting_name = %(meeting_name)s"
        " AND meeting_date = %(meeting_date)s",
        meeting,
    ).fetchone()
    if found is None:
        found = conn.execute(
            "INSERT INTO meeting_documents (subdomain, document_type, meeting_name, meeting_date)"
            " VALUES (%(subdomain)s, %(document_type)s, %(meeting_name)s, %(meeting_date)s)"
            " RETURNING id",
            meeting,
        ).fetchone()
    assert found is not None
    page = {
        **key,
        "id": r["id"],
        "document_id": found[0],
        "page_number": r["page"],
        "text": r["text"],
        "page_image": r["page_image"],
        "entities_json": r["entities_json"],
        "votes_json": r["votes_json"],
    }
    exists = conn.execute(
        "SELECT 1 FROM meeting_pages WHERE subdomain = %(subdomain)s"
        " AND document_type = %(document_type)s AND id = %(id)s FOR UPDATE",
        page,
    ).fetchone()
    if exists:
        conn.execute(
            "UPDATE meeting_pages SET document_id = %(document_id)s,"
            " page_number = %(page_number)s, text = %(text)s, page_image = %(page_image)s,"
            " entities_json = %(entities_json)s, votes_json = %(votes_json)s, modified = now()"
            " WHERE subdomain = %(subdomain)s AND document_type = %(document_type)s"
            " AND id = %(id)s",
            page,
        )
        return 0
    conn.execute(
        "INSERT INTO meeting_pages (subdomain, document_type, id, document_id, page_number,"
        " text, page_image, entities_json, votes_json) VALUES (%(subdomain)s,"
        " %(document_type)s, %(id)s, %(document_id)s, %(page_number)s, %(text)s,"
        " %(page_image)s, %(entities_json)s, %(votes_json)s)",
        page,
    )
    return 1


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
