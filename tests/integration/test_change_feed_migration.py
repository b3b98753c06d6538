"""0007_change_feed on a mirror already holding pages: versions assigned once, in key order."""

from __future__ import annotations

import random

import psycopg

from civicband import db
from tests.integration.test_seen_pages_migration import schema_before

FEED = 7


def test_the_migration_gives_existing_pages_versions_once_in_key_order(database_url):
    keys = [
        (site, kind, f"{n:012x}")
        for site in ("b.ca", "a.ca", "a-b.ca")
        for kind in ("minutes", "agenda")
        for n in (0xFF, 0x10, 0xA0, 0x0B)
    ]
    random.Random(3).shuffle(keys)  # inserted in no particular order
    with psycopg.connect(database_url) as conn:
        schema_before(conn, FEED)
        for site in {k[0] for k in keys}:
            conn.execute("INSERT INTO municipalities (subdomain) VALUES (%s)", [site])
        for site, kind, page_id in keys:
            document = conn.execute(
                "INSERT INTO meeting_documents (subdomain, document_type, meeting_name,"
                " meeting_date) VALUES (%s, %s, 'Council', '2024-01-02')"
                " ON CONFLICT (subdomain, document_type, meeting_name, meeting_date)"
                " DO UPDATE SET modified = now() RETURNING id",
                [site, kind],
            ).fetchone()
            conn.execute(
                "INSERT INTO meeting_pages (subdomain, document_type, id, document_id, text)"
                " VALUES (%s, %s, %s, %s, 'page')",
                [site, kind, page_id, document[0]],
            )
        conn.commit()
        assert db.migrate(conn)[0] == FEED  # and the migrations after it
        rows = conn.execute(
            "SELECT subdomain, document_type, id, version FROM meeting_pages ORDER BY version"
        ).fetchall()
        # Byte order of (subdomain, document_type, id), whatever the database's collation.
        assert [r[:3] for r in rows] == sorted(keys, key=lambda k: tuple(s.encode() for s in k))
        assert [r[3] for r in rows] == list(range(1, len(keys) + 1))
        # Assigned once: migrating again changes nothing, and the next change comes after.
        assert db.migrate(conn) == []
        again = conn.execute("SELECT id, version FROM meeting_pages ORDER BY version").fetchall()
        assert [r[1] for r in again] == [r[3] for r in rows]
        assert (
            conn.execute("SELECT nextval('meeting_page_versions')").fetchone()[0] == len(keys) + 1
        )


def test_the_migration_on_an_empty_mirror_starts_versions_at_one(database_url):
    with psycopg.connect(database_url) as conn:
        schema_before(conn, FEED)
        conn.commit()
        assert db.migrate(conn)[0] == FEED  # and the migrations after it
        assert conn.execute("SELECT nextval('meeting_page_versions')").fetchone()[0] == 1
