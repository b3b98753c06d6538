"""Generate clerk-schema SQLite databases for the civic.band look-alike (stdlib only).

See README.md beside this file for what the served JSON looks like on each Datasette line.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import random
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

TABLES = ("agendas", "minutes")
COLUMNS = ("id", "meeting", "date", "page", "text", "page_image", "entities_json", "votes_json")
LEGACY_COLUMNS = COLUMNS[:6]
MEETINGS = (
    "City Council",
    "Planning Commission",
    "Parks and Recreation Commission",
    "Board of Zoning Adjustments",
    "Housing Advisory Committee",
    "Budget and Finance Committee",
    "Library Board of Trustees",
    "Transportation Commission",
)
_VOCAB = (
    "motion approve consent calendar item public hearing ordinance resolution staff report "
    "council member mayor seconded carried unanimously budget zoning permit variance housing "
    "element amendment minutes adjourned closed session agenda fiscal year contract award "
    "street park library water sewer traffic safety climate equity comment recess vote"
)
WORDS = tuple(_VOCAB.split())
NAMES = ("Garcia", "Nguyen", "Smith", "Okafor", "Chen", "Patel", "Rossi", "Kowalski", "Haddad")


def row_id(table: str, meeting: Any, date: Any, page: Any, text: Any) -> str:
    """Return clerk's page id: sha256 of sorted-key JSON of (kind, meeting, date, page, text)."""
    kind = "agenda" if table == "agendas" else "minutes"
    key = {"kind": kind, "meeting": meeting, "date": date, "page": page, "text": text}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()[:12]


def page_image(table: str, meeting: str, date: str, page: int) -> str:
    """Return clerk's page_image path, e.g. /_agendas/City Council/2024-01-02/0001.png."""
    prefix = "/_agendas" if table == "agendas" else ""
    return f"{prefix}/{meeting}/{date}/{page:04d}.png"


def _text(rng: random.Random, size: int) -> str:
    """Return about `size` characters of meeting-like prose."""
    out: list[str] = []
    length = 0
    while length < size:
        word = rng.choice(WORDS)
        out.append(word)
        length += len(word) + 1
    return " ".join(out)[:size]


def _entities(rng: random.Random) -> str | None:
    """Return an entities_json value (sometimes NULL)."""
    if rng.random() < 0.1:
        return None
    persons = sorted(rng.sample(NAMES, rng.randint(0, 3)))
    return json.dumps({"persons": persons, "orgs": [], "locations": []})


def _votes(rng: random.Random) -> str | None:
    """Return a votes_json value (sometimes NULL)."""
    if rng.random() < 0.1:
        return None
    votes = [{"motion": "approve", "result": rng.choice(["passed", "failed"])}]
    return json.dumps({"votes": votes if rng.random() < 0.3 else []})


def make_rows(
    kind: str,
    n: int,
    *,
    seed: int | str = 0,
    text_size: int = 200,
    start_date: str = "2020-01-06",
) -> list[dict[str, Any]]:
    """Return `n` deterministic rows for table `kind` ("agendas" or "minutes"), unique ids."""
    assert kind in TABLES, kind
    rng = random.Random(f"{kind}:{seed}")
    day = dt.date.fromisoformat(start_date)
    rows: list[dict[str, Any]] = []
    seen_ids: set[str] = set()
    seen_meetings: set[tuple[str, str]] = set()
    while len(rows) < n:
        day += dt.timedelta(days=rng.randint(0, 3))
        meeting, date = rng.choice(MEETINGS), day.isoformat()
        if (meeting, date) in seen_meetings:
            continue
        seen_meetings.add((meeting, date))
        for page in range(1, min(rng.randint(1, 8), n - len(rows)) + 1):
            text = "" if rng.random() < 0.02 else _text(rng, text_size)
            rid = row_id(kind, meeting, date, page, text)
            if rid in seen_ids:
                continue
            seen_ids.add(rid)
            rows.append(
                {
                    "id": rid,
                    "meeting": meeting,
                    "date": date,
                    "page": page,
                    "text": text,
                    "page_image": page_image(kind, meeting, date, page),
                    "entities_json": _entities(rng),
                    "votes_json": _votes(rng),
                }
            )
    return rows


def make_digit_id_rows(
    kind: str, n: int, *, seed: int | str = 0, leading_zero: bool = False
) -> list[dict[str, Any]]:
    """Return `n` valid rows whose ids are all decimal digits (optionally starting with 0)."""
    rng = random.Random(f"digits:{kind}:{seed}")
    rows: list[dict[str, Any]] = []
    date = "2023-03-14"
    meeting = "Special City Council"
    page = 0
    while len(rows) < n:
        page += 1
        for attempt in range(1_000_000):
            text = f"{_text(rng, 60)} #{attempt}"
            rid = row_id(kind, meeting, date, page, text)
            if rid.isdigit() and (not leading_zero or rid.startswith("0")):
                break
        else:  # pragma: no cover - (10/16)**12 makes this practically impossible
            raise RuntimeError("no all-digit id found")
        rows.append(
            {
                "id": rid,
                "meeting": meeting,
                "date": date,
                "page": page,
                "text": text,
                "page_image": page_image(kind, meeting, date, page),
                "entities_json": None,
                "votes_json": None,
            }
        )
    return rows


def db_path(root: Path, subdomain: str) -> Path:
    """Return the path of a site's meetings.db."""
    return Path(root) / subdomain / "meetings.db"


def _connect(path: Path) -> sqlite3.Connection:
    """Open a database for writing, waiting for readers (Datasette) to let go."""
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    conn.execute("PRAGMA busy_timeout = 30000")
    return conn


def _insert(conn: sqlite3.Connection, table: str, rows: Iterable[dict[str, Any]]) -> None:
    """Insert each dict verbatim (its own keys; missing columns are NULL; legacy drops JSON)."""
    assert table in TABLES, table
    have = {r[1] for r in conn.execute(f'PRAGMA table_info("{table}")')}
    for row in rows:
        row = {k: v for k, v in row.items() if k in have or k not in COLUMNS[6:]}
        cols = ", ".join(f'"{c}"' for c in row)
        marks = ", ".join("?" for _ in row)
        sql = f'INSERT INTO "{table}" ({cols}) VALUES ({marks})'
        conn.execute(sql, list(row.values()))


def write_site(
    root: Path,
    subdomain: str,
    agendas: list[dict[str, Any]],
    minutes: list[dict[str, Any]],
    *,
    legacy: bool = False,
) -> Path:
    """Create or rebuild root/<subdomain>/meetings.db in one transaction; return its path."""
    path = db_path(root, subdomain)
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = LEGACY_COLUMNS if legacy else COLUMNS
    conn = _connect(path)
    try:
        conn.execute("BEGIN IMMEDIATE")
        for table, rows in (("agendas", agendas), ("minutes", minutes)):
            conn.execute(f'DROP TABLE IF EXISTS "{table}"')
            types = {"id": "TEXT PRIMARY KEY", "page": "INTEGER"}
            defs = ", ".join(f"{c} {types.get(c, 'TEXT')}" for c in cols)
            conn.execute(f'CREATE TABLE "{table}" ({defs})')
            _insert(conn, table, rows)
        conn.execute("COMMIT")
    finally:
        conn.close()
    return path


def write_meta(root: Path, subdomain: str, meta: dict[str, Any]) -> None:
    """Write root/<subdomain>/site.json (name, state, kind, country, last_updated)."""
    path = Path(root) / subdomain / "site.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(meta))


def add_rows(root: Path, subdomain: str, table: str, rows: list[dict[str, Any]]) -> None:
    """Insert rows verbatim into an existing site's table."""
    conn = _connect(db_path(root, subdomain))
    try:
        conn.execute("BEGIN IMMEDIATE")
        _insert(conn, table, rows)
        conn.execute("COMMIT")
    finally:
        conn.close()


def delete_rows(root: Path, subdomain: str, table: str, ids: Iterable[str | None]) -> int:
    """Delete rows by id (None deletes NULL-id rows); return how many went."""
    assert table in TABLES, table
    conn = _connect(db_path(root, subdomain))
    deleted = 0
    try:
        conn.execute("BEGIN IMMEDIATE")
        for rid in ids:
            cur = conn.execute(f'DELETE FROM "{table}" WHERE id IS ?', (rid,))
            deleted += cur.rowcount
        conn.execute("COMMIT")
    finally:
        conn.close()
    return deleted


def read_rows(root: Path, subdomain: str, table: str) -> list[dict[str, Any]]:
    """Return every row of a site's table as dicts, in rowid order."""
    assert table in TABLES, table
    conn = sqlite3.connect(f"file:{db_path(root, subdomain)}?mode=ro", uri=True, timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(f'SELECT * FROM "{table}" ORDER BY rowid')]
    finally:
        conn.close()


def count_rows(path: Path, table: str) -> int:
    """Return a table's row count (0 if the table is missing)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()
