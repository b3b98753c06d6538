"""schema.sql and the ordered migrations must describe the same database.

The agreement test and the shipping test take the SQL from the built wheel (tests/artefacts.py),
so they check what pip installs, not the checkout.
"""

import psycopg
import pytest
from psycopg import sql

from civicband import db
from tests import artefacts

CATALOG = """
SELECT 'column', c.relname || '.' || a.attname,
       format_type(a.atttypid, a.atttypmod) || ' notnull=' || a.attnotnull
       || ' default=' || coalesce(pg_get_expr(d.adbin, d.adrelid), '')
       || ' generated=' || a.attgenerated::text || ' identity=' || a.attidentity::text
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE n.nspname = %(schema)s AND a.attnum > 0 AND NOT a.attisdropped AND c.relkind = 'r'
UNION ALL
SELECT 'constraint', c.relname || '.' || co.conname,
       replace(pg_get_constraintdef(co.oid), %(schema)s || '.', '')
FROM pg_constraint co
JOIN pg_class c ON c.oid = co.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s
UNION ALL
SELECT 'index', i.indexname, replace(i.indexdef, %(schema)s || '.', '')
FROM pg_indexes i WHERE i.schemaname = %(schema)s
ORDER BY 1, 2
"""


def _catalog(conn: psycopg.Connection, schema: str) -> list[tuple[str, str, str]]:
    return conn.execute(CATALOG, {"schema": schema}).fetchall()


@pytest.fixture(scope="session")
def wheel(pytestconfig, tmp_path_factory) -> artefacts.Artefact:
    return artefacts.wheel(pytestconfig, tmp_path_factory)


@pytest.fixture(scope="session")
def wheel_sql(pytestconfig, wheel) -> dict:
    """schema_sql(), migration_files() and queries() of civicband imported from the wheel."""
    return artefacts.load_from(pytestconfig, wheel)


def test_migrations_and_schema_agree(database_url, wheel_sql):
    def apply_migrations(conn: psycopg.Connection) -> None:
        for _version, _name, text in wheel_sql["migrations"]:
            conn.execute(text)

    assert wheel_sql["migrations"], "the wheel ships no migrations"
    with psycopg.connect(database_url) as conn:
        for schema, apply in (
            ("by_migrations", apply_migrations),
            ("by_schema", lambda c: c.execute(wheel_sql["schema"])),
        ):
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
            apply(conn)
        conn.commit()
        by_migrations = _catalog(conn, "by_migrations")
        by_schema = _catalog(conn, "by_schema")
    assert by_migrations, "the migrations created nothing"
    assert [row for row in by_migrations if row[0] == "column"], "no columns compared"
    assert by_migrations == by_schema


def test_migrate_is_idempotent_and_records_versions(database_url):
    with psycopg.connect(database_url) as conn:
        first = db.migrate(conn)
        second = db.migrate(conn)
        versions = [row[0] for row in conn.execute("SELECT version FROM civicband_migrations")]
    assert first == [version for version, _, _ in db.migration_files()]
    assert second == []
    assert versions == first


def test_old_database_gets_only_missing_migrations(database_url):
    with psycopg.connect(database_url) as conn:
        conn.execute(db.migration_files()[0][2])
        conn.execute(
            "CREATE TABLE civicband_migrations (version integer PRIMARY KEY, name text NOT NULL,"
            " applied timestamptz NOT NULL DEFAULT now())"
        )
        conn.execute("INSERT INTO civicband_migrations (version, name) VALUES (1, 'initial')")
        conn.commit()
        assert db.migrate(conn) == [v for v, _, _ in db.migration_files() if v > 1]


def test_sql_files_ship_inside_the_package(wheel, wheel_sql):
    artefacts.check_sql_came_from(wheel, wheel_sql)
