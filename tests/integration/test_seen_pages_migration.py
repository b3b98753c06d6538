"""0008_seen_pages on a pass paused under the previous version: the ids it saw are kept."""

from __future__ import annotations

import psycopg

from civicband import db

SEEN_PAGES = 8


def schema_before(conn: psycopg.Connection, version: int) -> None:
    """The database as the release before `version` left it (migrations recorded)."""
    conn.execute(
        "CREATE TABLE civicband_migrations (version integer PRIMARY KEY, name text NOT NULL,"
        " applied timestamptz NOT NULL DEFAULT now())"
    )
    for number, name, text in db.migration_files():
        if number < version:
            conn.execute(text)
            conn.execute(
                "INSERT INTO civicband_migrations (version, name) VALUES (%s, %s)", [number, name]
            )


def test_the_migration_keeps_what_a_paused_pass_saw(database_url):
    ids = ["0000000000ab", "ff0000000001", "10000000000c"]
    with psycopg.connect(database_url) as conn:
        schema_before(conn, SEEN_PAGES)
        conn.execute("INSERT INTO municipalities (subdomain) VALUES ('a.ca')")
        (job,) = conn.execute(
            "INSERT INTO backfill_jobs (subdomain, document_type, status)"
            " VALUES ('a.ca', 'agenda', 'paused') RETURNING id"
        ).fetchone()
        for page_id in ids:
            conn.execute("INSERT INTO job_seen_ids (job_id, id) VALUES (%s, %s)", [job, page_id])
        conn.commit()
        assert db.migrate(conn) == [SEEN_PAGES]
        seen = conn.execute(
            "SELECT unnest(ids) FROM job_seen_pages WHERE job_id = %s", [job]
        ).fetchall()
        assert sorted(row[0] for row in seen) == sorted(ids)
        (left,) = conn.execute("SELECT to_regclass('job_seen_ids') IS NULL").fetchone()
        assert left  # dropped: a worker of the previous version fails loudly, never silently
