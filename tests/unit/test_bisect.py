"""Bisection's SQL (civicband/bisect.py) run on SQLite over both tables, against Python's sums.

As in test_digest.py, the SQL runs on Python's sqlite3 in memory with its parameters bound as
text (as Datasette binds query-string parameters), over rows with hostile ids and values; what it
must answer is computed from the rows in Python (digest.id_halves, digest.content_fp).
"""

from __future__ import annotations

import functools
import random
import sqlite3
from collections.abc import Iterable, Mapping
from typing import Any

import pytest

from civicband.bisect import (
    LIST_DEPTH,
    WHOLE,
    Ask,
    bisect_sql,
    fetch_sql,
    range_values_sql,
    read_packed,
)
from civicband.digest import (
    HEX,
    HEX_ID,
    UNHASHED_COLUMNS,
    Bucket,
    DigestError,
    content_fp,
    id_halves,
)
from tests.unit.test_digest import (
    COLUMNS,
    HOSTILE_IDS,
    LEGACY_COLUMNS,
    hex_ids,
    make_rows,
    query,
)

TABLES = {"agenda": "agendas", "minutes": "minutes"}


def deep_ids(prefix: str, n: int, seed: int) -> list[str]:
    """n hex ids under one prefix: buckets deep enough to hold several rows at depth 3 and 4."""
    rng = random.Random(seed)
    return [prefix + "".join(rng.choice(HEX) for _ in range(12 - len(prefix))) for _ in range(n)]


def short(rows: list[dict[str, Any]], keep: int = 2000) -> list[dict[str, Any]]:
    """Rows whose long values are cut (NUL and mixed scripts kept): fast in Python and SQLite."""
    return [
        {
            k: v[:keep] + v[-keep:] if isinstance(v, str) and len(v) > 2 * keep else v
            for k, v in r.items()
        }
        for r in rows
    ]


@functools.cache
def agenda_rows_cached(seed: int) -> tuple[dict[str, Any], ...]:
    hostile = make_rows(HOSTILE_IDS, seed=seed)  # hostile ids, values whole (200,000 characters)
    bulk = [*hex_ids(300, seed=seed), *deep_ids("ab", 60, seed), *deep_ids("abc", 30, 9)]
    return (*hostile, *short(make_rows(dict.fromkeys(bulk), seed=seed)))


def agenda_rows(seed: int = 1) -> list[dict[str, Any]]:
    return [dict(r) for r in agenda_rows_cached(seed)]


@functools.cache
def minutes_rows_cached(seed: int) -> tuple[dict[str, Any], ...]:
    hostile = make_rows(HOSTILE_IDS, seed=seed + 100)
    # Some ids the agendas hold too (two tables can hold the same id), with other content.
    bulk = [
        *hex_ids(200, seed=seed),
        *deep_ids("cd", 50, seed),
        *deep_ids("ab", 20, seed + 5),
        *(r["id"] for r in agenda_rows()[-10:]),
    ]
    return (*hostile, *short(make_rows(dict.fromkeys(bulk), seed=seed + 100)))


def minutes_rows(seed: int = 2) -> list[dict[str, Any]]:
    return [dict(r) for r in minutes_rows_cached(seed)]


def site(
    tables: Mapping[str, list[dict[str, Any]]],
    columns: Mapping[str, tuple[str, ...]] | None = None,
) -> sqlite3.Connection:
    """One in-memory meetings database holding these tables (each with its own columns)."""
    conn = sqlite3.connect(":memory:")
    types = {"id": "TEXT PRIMARY KEY", "page": "INTEGER"}
    for name, rows in tables.items():
        cols = (columns or {}).get(name, COLUMNS)
        defs = ", ".join(f"{c} {types.get(c, 'TEXT')}" for c in cols)
        conn.execute(f"CREATE TABLE {name} ({defs})")
        for row in rows:
            conn.execute(
                f"INSERT INTO {name} VALUES ({', '.join('?' for _ in cols)})",
                [row.get(c) for c in cols],
            )
    return conn


def only(rows: Iterable[dict[str, Any]], columns: tuple[str, ...]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k in columns} for r in rows]


def conforming(rows: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [r for r in rows if isinstance(r["id"], str) and HEX_ID.match(r["id"])]


def python_subdigest(rows: Iterable[Mapping[str, Any]], prefix: str, depth: int) -> dict:
    """Sub-bucket digests of one bucket, from the rows in Python."""
    got: dict[str, Bucket] = {}
    for r in conforming(rows):
        if r["id"].startswith(prefix):
            key = r["id"][:depth]
            got[key] = got.get(key, Bucket()) + Bucket(1, *id_halves(r["id"]), content_fp(r))
    return got


def python_listing(rows: Iterable[Mapping[str, Any]], prefixes: Iterable[str]) -> dict:
    return {
        r["id"]: content_fp(r)
        for r in conforming(rows)
        if any(r["id"].startswith(p) for p in prefixes)
    }


def ask_site(conn: sqlite3.Connection, asks: Mapping[str, Ask], columns=COLUMNS):
    """The raw packed rows of one bisection answer, and what read_packed reads of them."""
    params = {n: v for tag, ask in asks.items() for n, v in ask.params(tag).items()}
    rows = query(conn, bisect_sql({t: TABLES[t] for t in asks}, columns), params)
    return rows, read_packed(rows, asks)


# ---- bisect_sql ----------------------------------------------------------------------------------


@pytest.mark.parametrize("legacy", [False, True], ids=["current", "legacy"])
def test_sub_digests_of_both_tables_are_what_python_sums(legacy):
    columns = LEGACY_COLUMNS if legacy else COLUMNS
    agendas, minutes = only(agenda_rows(), columns), only(minutes_rows(), columns)
    conn = site({"agendas": agendas, "minutes": minutes}, {"agendas": columns, "minutes": columns})
    asks = {"agenda": Ask(3, ("ab", "00", "f")), "minutes": Ask(4, ("ab", "cd", "12"))}
    _, got = ask_site(conn, asks, columns)
    expected_agenda = {}
    for prefix in asks["agenda"].prefixes:
        expected_agenda |= python_subdigest(agendas, prefix, 3)
    expected_minutes = {}
    for prefix in asks["minutes"].prefixes:
        expected_minutes |= python_subdigest(minutes, prefix, 4)
    assert got["agenda"].digests == expected_agenda
    assert got["minutes"].digests == expected_minutes
    assert got["agenda"].listed == got["minutes"].listed == {}
    # The buckets are really deep: several sub-buckets, some with several rows.
    assert len(expected_agenda) > 16
    assert max(b.n for b in expected_agenda.values()) > 3
    in_cd = sum(b.n for k, b in got["minutes"].digests.items() if k.startswith("cd"))
    assert in_cd == sum(1 for r in conforming(minutes) if r["id"].startswith("cd")) >= 50
    if not legacy:  # values are fingerprinted: not every sum is 0
        assert any(b.fp for b in expected_agenda.values())


@pytest.mark.parametrize("legacy", [False, True], ids=["current", "legacy"])
def test_listings_at_depth_12_are_each_id_and_its_fingerprint(legacy):
    columns = LEGACY_COLUMNS if legacy else COLUMNS
    agendas, minutes = only(agenda_rows(), columns), only(minutes_rows(), columns)
    conn = site({"agendas": agendas, "minutes": minutes}, {"agendas": columns, "minutes": columns})
    asks = {
        "agenda": Ask(LIST_DEPTH, ("abc", "12", "00")),
        "minutes": Ask(LIST_DEPTH, ("ab", "cd")),
    }
    _, got = ask_site(conn, asks, columns)
    assert got["agenda"].listed == python_listing(agendas, asks["agenda"].prefixes)
    assert got["minutes"].listed == python_listing(minutes, asks["minutes"].prefixes)
    assert got["agenda"].digests == got["minutes"].digests == {}
    assert "123456789012" in got["agenda"].listed  # all digits: listed as text, not a number
    assert len(got["agenda"].listed) >= 30


def test_mixed_depths_one_table_digests_the_other_lists():
    agendas, minutes = agenda_rows(), minutes_rows()
    conn = site({"agendas": agendas, "minutes": minutes})
    asks = {"agenda": Ask(4, ("abc",)), "minutes": Ask(LIST_DEPTH, ("ab",))}
    _, got = ask_site(conn, asks)
    assert got["agenda"].digests == python_subdigest(agendas, "abc", 4)
    assert got["agenda"].listed == {}
    assert got["minutes"].listed == python_listing(minutes, ["ab"])
    assert got["minutes"].digests == {}


def test_every_bucket_from_the_empty_prefix_is_the_whole_hex_digest():
    agendas = agenda_rows()
    conn = site({"agendas": agendas})
    _, got = ask_site(conn, {"agenda": Ask(2, ("",))})
    assert got["agenda"].digests == python_subdigest(agendas, "", 2)
    assert sum(b.n for b in got["agenda"].digests.values()) == len(conforming(agendas))


def test_buckets_asked_but_empty_are_absent():
    agendas, minutes = agenda_rows(), minutes_rows()
    ids = {r["id"] for r in agendas if isinstance(r["id"], str)}
    empty = next(
        p
        for p in (a + b + c for a in HEX for b in HEX for c in HEX)
        if not any(i.startswith(p) for i in ids)
    )
    conn = site({"agendas": agendas, "minutes": minutes})
    asks = {"agenda": Ask(4, ("ab", empty)), "minutes": Ask(LIST_DEPTH, (empty,))}
    raw, got = ask_site(conn, asks)
    assert {(r["tag"], r["p"]) for r in raw} == {("agenda", "ab")}
    assert got["minutes"].listed == {} and got["minutes"].digests == {}
    assert not any(k.startswith(empty) for k in got["agenda"].digests)


def test_non_conforming_ids_never_appear():
    # Every hostile id that starts like a hex bucket: 11 or 13 digits, NUL, non-ASCII, spaces.
    rows = make_rows(
        [
            "abcdef01234",
            "abcdef0123456",
            "ab\x00cdef012345",
            "abcdef012345\x00",
            "abcdef01234é",
            "abcdef012345\n",
            "abcdef01234 ",
            "abcDEF012345",
            "abcdef012345",  # the one that conforms
        ]
    )
    conn = site({"agendas": rows})
    _, listed = ask_site(conn, {"agenda": Ask(LIST_DEPTH, ("ab", "abc", "abcdef01234"))})
    assert listed["agenda"].listed == {"abcdef012345": content_fp(rows[-1])}
    _, digests = ask_site(conn, {"agenda": Ask(11, ("abcdef0123",))})
    assert digests["agenda"].digests == {
        "abcdef01234": Bucket(1, *id_halves("abcdef012345"), content_fp(rows[-1]))
    }


def test_a_tables_prefixes_never_return_the_other_tables_rows():
    # Each table holds rows in both prefixes; each is asked one.
    agendas = make_rows([*deep_ids("ab", 20, 1), *deep_ids("cd", 20, 2)], seed=1)
    minutes = make_rows([*deep_ids("ab", 15, 3), *deep_ids("cd", 15, 4)], seed=2)
    conn = site({"agendas": agendas, "minutes": minutes})
    asks = {"agenda": Ask(LIST_DEPTH, ("ab",)), "minutes": Ask(LIST_DEPTH, ("cd",))}
    raw, got = ask_site(conn, asks)
    assert got["agenda"].listed == python_listing(agendas, ["ab"])
    assert got["minutes"].listed == python_listing(minutes, ["cd"])
    assert len(got["agenda"].listed) == 20 and len(got["minutes"].listed) == 15
    assert {(r["tag"], r["p"]) for r in raw} == {("agenda", "ab"), ("minutes", "cd")}


def test_the_same_id_in_both_tables_is_answered_with_each_tables_content():
    shared = "ab0000000001"
    agendas = make_rows([shared], seed=1)
    minutes = [{**make_rows([shared], seed=2)[0], "page_image": "other"}]
    conn = site({"agendas": agendas, "minutes": minutes})
    asks = {"agenda": Ask(LIST_DEPTH, ("ab",)), "minutes": Ask(LIST_DEPTH, ("ab",))}
    _, got = ask_site(conn, asks)
    assert got["agenda"].listed == {shared: content_fp(agendas[0])}
    assert got["minutes"].listed == {shared: content_fp(minutes[0])}
    assert content_fp(agendas[0]) != content_fp(minutes[0])


def test_one_answer_row_per_bucket():
    agendas = agenda_rows()
    conn = site({"agendas": agendas})
    raw, got = ask_site(conn, {"agenda": Ask(LIST_DEPTH, ("ab", "12"))})
    assert sorted(r["p"] for r in raw) == ["12", "ab"]
    assert len(got["agenda"].listed) > len(raw)


# ---- Ask and read_packed -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("depth", "prefixes"),
    [
        (3, ("AB",)),  # upper case
        (3, ("ag",)),
        (3, ("a.b",)),  # the separator itself
        (3, ("a'",)),
        (3, ("a b",)),
        (3, ("ab", "x")),  # one bad among good ones
        (2, ("ab",)),  # not deeper than the prefix
        (2, ("abc",)),
        (13, ("ab",)),  # deeper than an id
        (0, ("",)),
    ],
)
def test_ask_refuses_non_hex_prefixes_and_depths_not_deeper(depth, prefixes):
    with pytest.raises(ValueError, match="cannot ask bucket"):
        Ask(depth, prefixes)


def test_ask_params_join_prefixes_with_the_separator():
    assert Ask(4, ("ab", "0", "")).params("minutes") == {"minutes": "ab.0.", "minutes_d": "4"}
    assert Ask(LIST_DEPTH, ("abcdef01234",)).depth == 12


ASKED = {"agenda": Ask(4, ("ab",)), "minutes": Ask(LIST_DEPTH, ("cd",))}


def test_read_packed_reads_good_rows():
    rows = [
        {"tag": "agenda", "p": "ab", "packed": "00:2:5:7:9,f1:1:0:0:0"},
        {"tag": "minutes", "p": "cd", "packed": "0123456789:42"},
    ]
    got = read_packed(rows, ASKED)
    assert got["agenda"].digests == {"ab00": Bucket(2, 5, 7, 9), "abf1": Bucket(1, 0, 0, 0)}
    assert got["minutes"].listed == {"cd0123456789": 42}
    assert got["agenda"].listed == {} and got["minutes"].digests == {}


@pytest.mark.parametrize(
    "row",
    [
        {"tag": "agenda", "p": "ab", "packed": "00:2:5:7"},  # a field short
        {"tag": "agenda", "p": "ab", "packed": "00:2:5:7:9:1"},  # a field long
        {"tag": "agenda", "p": "ab", "packed": "0:2:5:7:9"},  # suffix one digit short
        {"tag": "agenda", "p": "ab", "packed": "000:2:5:7:9"},  # one too long
        {"tag": "agenda", "p": "ab", "packed": "0g:2:5:7:9"},  # not hex
        {"tag": "agenda", "p": "ab", "packed": "00:x:5:7:9"},  # not a number
        {"tag": "agenda", "p": "ab", "packed": "00:2:5:7:9,"},  # an empty entry
        {"tag": "agenda", "p": "ab", "packed": ""},
        {"tag": "agenda", "p": "ab", "packed": "00:42"},  # a listing entry at depth 4
        {"tag": "minutes", "p": "cd", "packed": "0123456789:1:2:3:4"},  # digest at depth 12
        {"tag": "minutes", "p": "cd", "packed": "012345678:42"},  # an id 11 digits
        {"tag": "minutes", "p": "cd", "packed": "0123456789"},  # no fingerprint
    ],
)
def test_read_packed_refuses_malformed_entries(row):
    with pytest.raises(DigestError, match="malformed entry"):
        read_packed([row], ASKED)


@pytest.mark.parametrize(
    "row",
    [
        {"tag": "agenda", "p": "cd", "packed": "00:1:0:0:0"},  # minutes' bucket under agenda
        {"tag": "agenda", "p": "a", "packed": "b00:1:0:0:0"},
        {"tag": "minutes", "p": "ab", "packed": "0123456789:1"},
        {"tag": "other", "p": "ab", "packed": "00:1:0:0:0"},
    ],
)
def test_read_packed_refuses_rows_naming_buckets_not_asked(row):
    with pytest.raises(DigestError, match="not asked"):
        read_packed([row], ASKED)


@pytest.mark.parametrize(
    "row",
    [
        {"tag": None, "p": "ab", "packed": "00:1:0:0:0"},
        {"tag": "agenda", "p": None, "packed": "00:1:0:0:0"},
        {"tag": "agenda", "p": "ab", "packed": None},
        {"tag": "agenda", "p": "ab", "packed": 5},
        {"tag": "agenda", "p": 12, "packed": "00:1:0:0:0"},
        {"tag": "agenda", "packed": "00:1:0:0:0"},
        {},
    ],
)
def test_read_packed_refuses_fields_that_are_not_text(row):
    with pytest.raises(DigestError, match="not \\(tag, p, packed\\)"):
        read_packed([row], ASKED)


def test_read_packed_of_no_rows_is_empty_answers_for_each_table():
    got = read_packed([], ASKED)
    assert set(got) == {"agenda", "minutes"}
    assert all(a.digests == {} and a.listed == {} for a in got.values())


# ---- fetch_sql -----------------------------------------------------------------------------------


def fetch(conn, parts, columns=COLUMNS, **ids: list[str]):
    params = {name: ".".join(values) for name, values in ids.items()}
    return query(conn, fetch_sql(parts, columns), params)


def test_fetch_sql_answers_whole_and_values_rows_of_both_tables_tagged():
    agendas, minutes = agenda_rows(), minutes_rows()
    conn = site({"agendas": agendas, "minutes": minutes})
    hexes_a = [r["id"] for r in conforming(agendas)]
    hexes_m = [r["id"] for r in conforming(minutes)]
    whole_a, values_a, values_m = hexes_a[:5], hexes_a[5:9], hexes_m[:6]
    parts = [
        ("agenda", "agendas", True),
        ("agenda", "agendas", False),
        ("minutes", "minutes", False),
    ]
    rows = fetch(conn, parts, agenda_w=whole_a, agenda_v=values_a, minutes_v=values_m)
    by_tag: dict[str, dict[str, dict]] = {}
    for r in rows:
        by_tag.setdefault(r["tag"], {})[r["id"]] = r
    assert set(by_tag) == {"agenda", "agenda.v", "minutes.v"}
    by_id_a = {r["id"]: r for r in agendas if isinstance(r["id"], str)}
    by_id_m = {r["id"]: r for r in minutes if isinstance(r["id"], str)}
    assert set(by_tag["agenda"]) == set(whole_a)
    for i, r in by_tag["agenda"].items():
        assert {k: v for k, v in r.items() if k != "tag"} == {c: by_id_a[i][c] for c in WHOLE}
    for tag, ids, source in (("agenda.v", values_a, by_id_a), ("minutes.v", values_m, by_id_m)):
        assert set(by_tag[tag]) == set(ids)
        for i, r in by_tag[tag].items():
            assert r["text"] is None  # the text never travels with values
            expected = {c: source[i][c] for c in ("meeting", "date", "page", *UNHASHED_COLUMNS)}
            assert {k: r[k] for k in expected} == expected


def test_fetch_sql_keeps_all_digit_ids_as_text():
    rows = make_rows(["004351235980", "123456789012", "000000000000", "abcdef012345"])
    conn = site({"agendas": rows})
    got = fetch(
        conn,
        [("agenda", "agendas", True)],
        agenda_w=["004351235980", "123456789012", "000000000000"],
    )
    assert sorted(r["id"] for r in got) == ["000000000000", "004351235980", "123456789012"]
    got = fetch(conn, [("agenda", "agendas", False)], agenda_v=["004351235980"])
    assert [(r["tag"], r["id"]) for r in got] == [("agenda.v", "004351235980")]


def test_fetch_sql_reads_the_columns_a_legacy_table_lacks_as_null():
    rows = make_rows(hex_ids(5, seed=3))
    conn = site({"agendas": only(rows, LEGACY_COLUMNS)}, {"agendas": LEGACY_COLUMNS})
    ids = [r["id"] for r in rows]
    parts = [("agenda", "agendas", True), ("agenda", "agendas", False)]
    got = fetch(conn, parts, LEGACY_COLUMNS, agenda_w=ids[:2], agenda_v=ids[2:])
    assert len(got) == 5
    for r in got:
        assert r["entities_json"] is None and r["votes_json"] is None
        original = next(x for x in rows if x["id"] == r["id"])
        assert r["page_image"] == original["page_image"]
        assert (r["text"] == original["text"]) if r["tag"] == "agenda" else r["text"] is None


def test_fetch_sql_does_not_return_ids_not_asked_or_gone():
    rows = make_rows(hex_ids(10, seed=4))
    conn = site({"agendas": rows})
    got = fetch(conn, [("agenda", "agendas", True)], agenda_w=[rows[0]["id"], "ffffffffffff"])
    assert [r["id"] for r in got] == [rows[0]["id"]]


# ---- range_values_sql ----------------------------------------------------------------------------


def ranges(conn, table, columns, limit, prefixes, after="", located=False):
    return query(
        conn,
        range_values_sql(table, columns, limit, located=located),
        {"r": ".".join(prefixes), "after": after},
    )


def test_the_empty_prefix_is_every_conforming_id_in_order():
    agendas = agenda_rows()
    conn = site({"agendas": agendas})
    got = ranges(conn, "agendas", COLUMNS, 100_000, [""])
    expected = sorted(r["id"] for r in conforming(agendas))
    assert [r["id"] for r in got] == expected
    assert "004351235980" in expected and "123456789012" in expected
    by_id = {r["id"]: r for r in agendas if isinstance(r["id"], str)}
    for r in got:
        assert set(r) == {"id", *UNHASHED_COLUMNS}
        assert {c: r[c] for c in UNHASHED_COLUMNS} == {
            c: by_id[r["id"]][c] for c in UNHASHED_COLUMNS
        }


@pytest.mark.parametrize("limit", [1, 7, 1000])
def test_keyset_after_pages_through_every_id_once(limit):
    agendas = agenda_rows()
    conn = site({"agendas": agendas})
    seen: list[str] = []
    after = ""
    while True:
        page = ranges(conn, "agendas", COLUMNS, limit, ["ab", "0"], after=after)
        seen += [r["id"] for r in page]
        if len(page) < limit:
            break
        after = page[-1]["id"]
    expected = sorted(
        r["id"] for r in conforming(agendas) if r["id"][:2] == "ab" or r["id"][0] == "0"
    )
    assert seen == expected
    assert len(expected) > 60


def test_after_an_all_digit_id_is_compared_as_text():
    rows = make_rows(["004351235980", "0100000000ab", "099999999999", "0a0000000000"])
    conn = site({"agendas": rows})
    got = ranges(conn, "agendas", COLUMNS, 10, ["0"], after="004351235980")
    assert [r["id"] for r in got] == ["0100000000ab", "099999999999", "0a0000000000"]


@pytest.mark.parametrize("legacy", [False, True], ids=["current", "legacy"])
def test_located_adds_meeting_date_and_page(legacy):
    columns = LEGACY_COLUMNS if legacy else COLUMNS
    rows = only(make_rows(hex_ids(20, seed=8)), columns)
    conn = site({"minutes": rows}, {"minutes": columns})
    got = ranges(conn, "minutes", columns, 100, [""], located=True)
    assert len(got) == 20
    by_id = {r["id"]: r for r in rows}
    for r in got:
        assert set(r) == {"id", "meeting", "date", "page", *UNHASHED_COLUMNS}
        assert (r["meeting"], r["date"], r["page"]) == tuple(
            by_id[r["id"]][c] for c in ("meeting", "date", "page")
        )
        assert r["page_image"] == by_id[r["id"]]["page_image"]
        if legacy:
            assert r["entities_json"] is None and r["votes_json"] is None
    plain = ranges(conn, "minutes", columns, 100, [""])
    assert all("meeting" not in r for r in plain)
