"""Both sides of civicband/digest.py agree: SQLite (the source) and PostgreSQL (the mirror).

The same rows go into an SQLite table, digested with the source's SQL, and through the page
transaction's cleaning into PostgreSQL (rejected or stored), digested with the mirror's.
Hostile ids and values included: they must land in the same buckets with the same sums.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
from pathlib import Path
from typing import Any

import psycopg

from bench import fingerprint
from civicband import db, digest, mirror
from civicband.reads import COLUMNS, LEGACY_COLUMNS
from civicband.rows import INVALID_ID, MAX_ID_LENGTH, clean_page, raw_text
from civicband.store import Store
from tests.lookalike import data

HOSTILE_IDS = [
    None,
    "",
    "abc",
    "ABCDEF012345",
    "123456789012",
    "000000000000",
    "0000000000000",
    "ab\x00cdef01234",
    "éèàüöäß01234",
    "ffffffffffff",
    " a1b2c3d4e5f6",
]


def rows(legacy: bool) -> list[dict[str, Any]]:
    generated = data.make_rows("agendas", 400, seed="digest", hostile=True)
    odd = [{**generated[i], "id": row_id} for i, row_id in enumerate(HOSTILE_IDS)]
    out = odd + generated[len(HOSTILE_IDS) :]
    if legacy:
        out = [{c: row.get(c) for c in LEGACY_COLUMNS} for row in out]
    rng = random.Random(3)
    rng.shuffle(out)
    return out


def source_digest(
    rows: list[dict[str, Any]], columns: tuple[str, ...], split: bool
) -> digest.Digest:
    conn = sqlite3.connect(":memory:")
    defined = ", ".join(c + (" text primary key" if c == "id" else "") for c in columns)
    conn.execute(f"create table agendas ({defined})")
    conn.executemany(
        f"insert into agendas values ({', '.join('?' for _ in columns)})",
        [tuple(row.get(c) for c in columns) for row in rows],
    )
    ranges = digest.IdRange().split() if split else [digest.IdRange()]
    parts = []
    for id_range in ranges:
        sql, params = digest.digest_sql("agendas", columns, id_range)
        cursor = conn.execute(sql, params)
        names = [d[0] for d in cursor.description]
        parts.append(digest.read_digest(dict(zip(names, row, strict=True)) for row in cursor))
    return digest.merge(parts)


def mirror_digest(url: str, tmp_path: Path, rows: list[dict[str, Any]]) -> digest.Digest:
    async def work() -> digest.Digest:
        store = Store(url, tmp_path / ".civicband", pool_size=2, timeout=5)
        await store.open()
        try:

            async def write(conn: Any) -> digest.Digest:
                await conn.execute("INSERT INTO municipalities (subdomain) VALUES ('d.ca')")
                job = await (
                    await conn.execute(
                        "INSERT INTO backfill_jobs (subdomain, document_type)"
                        " VALUES ('d.ca', 'agenda') RETURNING id"
                    )
                ).fetchone()
                # In pages of 50, as the crawl stores them (ids unique per page).
                for start in range(0, len(rows), 50):
                    page = clean_page(rows[start : start + 50], unicode_checked=False)
                    await mirror.store_rows(conn, "d.ca", "agenda", job[0], page, remember=False)
                return await mirror.local_digest(conn, "d.ca", "agenda")

            return await store.transact(write, "digesting")
        finally:
            await store.close()

    return asyncio.run(work())


def test_the_mirror_digest_equals_the_source_digest_hostile_ids_included(database_url, tmp_path):
    hostile = rows(legacy=False)
    source = source_digest(hostile, COLUMNS, split=False)
    assert source == source_digest(hostile, COLUMNS, split=True)
    hexes = [i for i in HOSTILE_IDS if i is not None and digest.HEX_ID.match(i)]
    assert hexes == ["123456789012", "000000000000", "ffffffffffff"]
    assert source[digest.OTHER].n == len(HOSTILE_IDS) - len(hexes)
    local = mirror_digest(database_url, tmp_path, hostile)
    assert digest.differing(source, local) == []
    with psycopg.connect(database_url) as conn:
        rejected = conn.execute("SELECT count(*) FROM rejected_rows").fetchone()[0]
    assert rejected >= 4  # NULL, empty, NUL and space-led ids are rejected, and still counted


def test_older_tables_without_json_columns_agree_too(database_url, tmp_path):
    legacy = rows(legacy=True)
    assert (
        digest.differing(
            source_digest(legacy, LEGACY_COLUMNS, split=False),
            mirror_digest(database_url, tmp_path, legacy),
        )
        == []
    )


def test_a_changed_value_outside_the_id_hash_changes_one_bucket(database_url, tmp_path):
    before = rows(legacy=False)
    target = next(r for r in before if isinstance(r["id"], str) and digest.HEX_ID.match(r["id"]))
    after = [
        {**r, "entities_json": '{"persons": ["Someone Else"]}'} if r is target else r
        for r in before
    ]
    assert digest.differing(
        source_digest(after, COLUMNS, split=False), mirror_digest(database_url, tmp_path, before)
    ) == [target["id"][:2]]


def fingerprint_corpus() -> list[dict[str, Any]]:
    """Rows PostgreSQL can hold (no NUL): hostile look-alike, clerk-shaped and edge values."""
    hostile = data.make_rows("agendas", 120, seed="fp", hostile=True)
    rng = random.Random("fp")
    clerk = [fingerprint.row(rng, f"{rng.getrandbits(8):02x}") for _ in range(120)]
    edges = [None, "", "a", "é", "🏛️ e\u0301", "z" * 100_001, '{"name": "\\u00e9"}', "\r\n\t"]
    odd = [
        {"id": row_id, "page_image": a, "entities_json": b, "votes_json": c}
        for row_id, a, b, c in zip(
            [*HOSTILE_IDS, *(f"{rng.getrandbits(48):012x}" for _ in range(40))],
            edges * 7,
            edges[3:] * 9,
            edges[5:] * 12,
            strict=False,
        )
    ]
    out = []
    for row in [*hostile, *clerk, *odd]:
        clean = {k: v.replace("\x00", "") if isinstance(v, str) else v for k, v in row.items()}
        if isinstance(clean["id"], str) and clean["id"]:
            out.append(clean)
    return out


def test_python_sqlite_and_the_postgresql_function_agree(database_url):
    corpus = fingerprint_corpus()
    conn = sqlite3.connect(":memory:")
    conn.execute(
        "CREATE TABLE t (id TEXT PRIMARY KEY, page_image TEXT, entities_json TEXT, votes_json TEXT)"
    )
    content = ("page_image", "entities_json", "votes_json")
    conn.executemany(
        "INSERT OR IGNORE INTO t VALUES (?, ?, ?, ?)",
        [(r["id"], *(r.get(c) for c in content)) for r in corpus],
    )
    inner = digest.inner_sql("t", ("id", *content))
    in_sqlite = dict(
        conn.execute(f"select id,{digest.fp_sql(content)} from ({inner})", {"h": digest.HEX})
    )
    with psycopg.connect(database_url) as pg:
        db.migrate(pg)
        for row in corpus:
            values = [row["id"], *(row.get(c) for c in content)]
            got = pg.execute("SELECT civicband_content_fp(%s, %s, %s, %s)", values).fetchone()[0]
            assert got == digest.content_fp(row) == in_sqlite[row["id"]], row["id"]
    assert len(corpus) > 250


def test_the_migration_recomputes_stored_fingerprints(database_url):
    row = fingerprint.row(random.Random(1), "ab")
    with psycopg.connect(database_url) as pg:
        for version, _, text in db.migration_files():
            if version < 4:
                pg.execute(text)
        pg.execute("INSERT INTO municipalities (subdomain) VALUES ('s')")
        document = pg.execute(
            "INSERT INTO meeting_documents (subdomain, document_type, meeting_name, meeting_date)"
            " VALUES ('s', 'agenda', 'M', '2024-01-02') RETURNING id"
        ).fetchone()[0]
        pg.execute(
            "INSERT INTO meeting_pages (subdomain, document_type, id, document_id, page_image,"
            " entities_json, votes_json, content_fp) VALUES ('s', 'agenda', %s, %s, %s, %s, %s, 1)",
            [row["id"], document, row["page_image"], row["entities_json"], row["votes_json"]],
        )
        raws = [raw_text(row), raw_text({**row, "votes_json": "a\x00b"}), "not json"]
        for raw in raws:
            pg.execute(
                "INSERT INTO rejected_rows (subdomain, document_type, row_id, reason, raw,"
                " content_fp) VALUES ('s', 'agenda', 'x', 'r', %s, 1)",
                [raw],
            )
        pg.execute(next(text for version, _, text in db.migration_files() if version == 4))
        stored = pg.execute("SELECT content_fp FROM meeting_pages").fetchone()[0]
        rejected = [r[0] for r in pg.execute("SELECT content_fp FROM rejected_rows ORDER BY id")]
    assert stored == digest.content_fp(row) != 1
    assert rejected == [digest.content_fp(row), 0, 0]


def test_ids_that_read_the_same_once_cut_are_three_rows_on_both_sides(database_url, tmp_path):
    generated = data.make_rows("agendas", 150, seed="cut", hostile=True)
    valid = "v" * MAX_ID_LENGTH  # a page's id; the two longer ones are invalid, shown cut as it
    for at, row_id in ((0, valid), (60, valid + "a"), (120, valid + "b")):
        generated[at] = {**generated[at], "id": row_id}
    local = mirror_digest(database_url, tmp_path, generated)
    assert digest.differing(source_digest(generated, COLUMNS, split=False), local) == []
    with psycopg.connect(database_url) as conn:
        rejected = conn.execute("SELECT row_id, reason FROM rejected_rows").fetchall()
    assert rejected == [(valid, INVALID_ID)] * 2
