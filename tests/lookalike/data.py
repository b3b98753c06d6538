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
    hostile: bool = False,
) -> list[dict[str, Any]]:
    """Return `n` deterministic rows for table `kind` ("agendas" or "minutes"), unique ids.

    hostile=True mixes in the HOSTILE_CATEGORIES (see hostile_rows); the default output never
    changes, because other tests and benchmarks depend on it byte for byte.
    """
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
    return hostile_rows(kind, rows, seed=seed) if hostile else rows


# ---- hostile rows ---------------------------------------------------------------------------

# 🏛️ (astral, with VS16) and 👩‍⚖️ (ZWJ sequence); written as escapes so the source stays ASCII.
CLASSICAL_BUILDING = "\U0001f3db\ufe0f"
JUDGE = "\U0001f469\u200d\u2696\ufe0f"
# What each text category inserts between the words of a page's text.
HOSTILE_SNIPPETS = {
    "astral_emoji": f" {CLASSICAL_BUILDING} {JUDGE} ",
    "rtl": " \u0645\u062c\u0644\u0633 \u0627\u0644\u0645\u062f\u064a\u0646\u0629 \u2014 "
    "\u05de\u05d5\u05e2\u05e6\u05ea \u05d4\u05e2\u05d9\u05e8 ",
    "combining": " cafe\u0301 Zoe\u0308 ",
    "tab": " item\t4\tb ",
    "crlf": " Motion:\r\nSeconded:\r\n ",
    "lone_cr": " carried\runanimously ",
    "backslash": " C:\\agenda\\item\\n 3\\ ",
    "single_quote": " Mayor's 'consent' item ",
    "double_quote": ' the "Brown Act" ',
    "nul_text": " a\x00b ",
}
MEETING_SUFFIX = f" \u2014 S\u00e9ance sp\u00e9ciale {CLASSICAL_BUILDING} \u00abCabildo\u00bb"
ESCAPED_NAME = f"Jos\u00e9 N\u00fa\u00f1ez {CLASSICAL_BUILDING} O\x00Brien"  # all escaped
NON_ASCII_NAME = f"Nguy\u1ec5n {JUDGE} \u0645\u062c\u0644\u0633"  # kept raw (ensure_ascii=False)
LONG_TEXT_SIZE = 200_000
LONG_ROWS = 3
# Every category hostile rows cover (each at least once when n >= len(HOSTILE_CATEGORIES)):
# HOSTILE_SNIPPETS in `text`; long_text (LONG_ROWS rows of ~LONG_TEXT_SIZE characters);
# nul_meeting / unicode_meeting in `meeting` (page_image follows the meeting);
# nul_page_image; and in both entities_json and votes_json: json_escapes (\u00e9,
# \ud83c\udfdb surrogate pairs and \u0000 as JSON escapes), json_non_ascii (raw UTF-8)
# and nul_json (a raw NUL inside a JSON string: only json.loads(strict=False) reads it).
HOSTILE_CATEGORIES = (
    *HOSTILE_SNIPPETS,
    "long_text",
    "nul_meeting",
    "unicode_meeting",
    "nul_page_image",
    "json_escapes",
    "json_non_ascii",
    "nul_json",
)
_ROTATION = tuple(c for c in HOSTILE_CATEGORIES if c != "long_text")


def _json_items(cats: set[str]) -> list[str]:
    """Return JSON string literals, each encoded the way its category asks."""
    items = []
    if "json_escapes" in cats:  # ensure_ascii: \u00e9, \ud83c\udfdb\ufe0f, \u0000 escapes
        items.append(json.dumps(ESCAPED_NAME))
    if "json_non_ascii" in cats:
        items.append(json.dumps(NON_ASCII_NAME, ensure_ascii=False))
    if "nul_json" in cats:
        items.append(json.dumps("Gar\x00cia").replace("\\u0000", "\x00"))
    return items


def _hostile_row(kind: str, row: dict[str, Any], cats: set[str], rng: random.Random) -> dict:
    """Return a copy of `row` carrying the hostile categories `cats` (id not yet recomputed)."""
    row = dict(row)
    text = _text(rng, LONG_TEXT_SIZE) if "long_text" in cats else row["text"]
    snippets = [HOSTILE_SNIPPETS[c] for c in HOSTILE_SNIPPETS if c in cats]
    # Positions index the base text and are applied right to left, so no snippet splits another.
    spots = sorted((rng.randint(0, len(text)) for _ in snippets), reverse=True)
    for spot, snippet in zip(spots, snippets, strict=True):
        text = text[:spot] + snippet + text[spot:]
    row["text"] = text
    if "unicode_meeting" in cats:
        row["meeting"] += MEETING_SUFFIX
    if "nul_meeting" in cats:
        row["meeting"] = row["meeting"].replace(" ", "\x00 ", 1)
    row["page_image"] = page_image(kind, row["meeting"], row["date"], row["page"])
    if "nul_page_image" in cats:
        row["page_image"] = row["page_image"].replace(".png", "\x00.png")
    items = _json_items(cats)
    if items:
        persons = ", ".join(items)
        row["entities_json"] = f'{{"persons": [{persons}], "orgs": [], "locations": []}}'
        votes = ", ".join(f'{{"motion": {i}, "result": "passed"}}' for i in items)
        row["votes_json"] = f'{{"votes": [{votes}]}}'
    return row


def hostile_rows(kind: str, rows: list[dict[str, Any]], *, seed: int | str = 0) -> list[dict]:
    """Return `rows` with hostile text spread over them by `seed`; ids recomputed, still unique.

    Row i always gets category _ROTATION[i % len], plus each other one with probability 0.15;
    LONG_ROWS rows (chosen by seed) get ~LONG_TEXT_SIZE characters of text. `id` and `date`
    stay clean: ids are row_id(kind, meeting, date, page, text) of the hostile values.
    """
    rng = random.Random(f"hostile:{kind}:{seed}")
    longs = set(rng.sample(range(len(rows)), min(LONG_ROWS, len(rows))))
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, base in enumerate(rows):
        cats = {_ROTATION[i % len(_ROTATION)]} | {c for c in _ROTATION if rng.random() < 0.15}
        if i in longs:
            cats.add("long_text")
        row = _hostile_row(kind, base, cats, rng)
        while (rid := row_id(kind, row["meeting"], row["date"], row["page"], row["text"])) in seen:
            row["text"] += " "
        seen.add(rid)
        out.append({"id": rid, **{k: v for k, v in row.items() if k != "id"}})
    return out


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


# site.json keys server.py hands to the site's Datasette as settings (when present).
SITE_SETTINGS = ("max_returned_rows", "sql_time_limit_ms", "default_page_size")


def write_meta(root: Path, subdomain: str, meta: dict[str, Any]) -> None:
    """Write a site's site.json (index fields, SITE_SETTINGS) whole, so no reader sees half."""
    path = Path(root) / subdomain / "site.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(meta))
    tmp.replace(path)


def read_meta(root: Path, subdomain: str) -> dict[str, Any]:
    """Return root/<subdomain>/site.json ({} when the site has none)."""
    path = Path(root) / subdomain / "site.json"
    return json.loads(path.read_text()) if path.exists() else {}


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
