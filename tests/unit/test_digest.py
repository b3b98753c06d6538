"""Bucket digests: the Python fingerprint and the source's SQL agree with SQLite itself.

Datasette runs the SQL of civicband/digest.py on SQLite, so every claim here is checked on
Python's sqlite3 in memory (the same engine family), with the parameters bound as text, as
Datasette binds query-string parameters. The expected digests are built from the rows in Python.
"""

from __future__ import annotations

import base64
import json
import random
import sqlite3
from collections.abc import Iterable, Mapping
from typing import Any

import pytest
from scrapy import Request

from bench.fingerprint import old_content_fp, v2_content_fp
from civicband.bisect import LIST_DEPTH, Ask, bisect_sql, read_packed
from civicband.datasette import sql_url
from civicband.digest import (
    HEX,
    MODULUS,
    OTHER,
    Bucket,
    Difference,
    DigestError,
    IdRange,
    bucket_of,
    compare,
    content_fp,
    count,
    differing,
    digest_sql,
    id_factor,
    id_halves,
    merge,
    other_rows_sql,
    read_digest,
    seen_whole,
    value_fp,
)
from civicband.reads import MAX_SPLIT_DEPTH
from civicband.settings import URLLENGTH_LIMIT

COLUMNS = ("id", "meeting", "date", "page", "text", "page_image", "entities_json", "votes_json")
LEGACY_COLUMNS = COLUMNS[:6]

LONG = "x" * 200_000
# Long text whose sampled characters are astral, combining and RTL, not ASCII.
LONG_MIXED = ("🏛️e\u0301مجلس👩\u200d⚖️" * 20_000)[:200_000]
HOSTILE_VALUES = [
    None,
    "",
    "\x00",
    "a\x00b",
    "\x00abc",
    "abc\x00",
    "abc\x00\x00def\x00",
    "🏛️ 👩‍⚖️",
    "😀",
    "e\u0301e\u0308",
    "مجلس עברית",
    "\u200fRTL\u200e mark",
    '{"name": "\\u00e9 \\ud83c\\udfdb \\u0000"}',
    "Nguyễn 👩‍⚖️ مجلس",
    "C:\\agenda\\item\\n 3\\",
    "'",
    '"',
    "\t\r\n\r",
    "/_agendas/City Council/2024-01-02/0001\x00.png",
    LONG,
    LONG_MIXED,
    LONG + "\x00" + LONG,
]
HOSTILE_IDS = [
    None,
    None,  # SQLite's non-INTEGER primary key allows several NULLs
    "",
    "a",
    "ab",
    "abcdef01234",  # 11 digits
    "abcdef0123456",  # 13 digits
    "ABCDEF012345",  # upper case
    "AbCdEf012345",
    "123456789012",  # all digits: conforming, bound as text
    "004351235980",
    "99999999999999",  # all digits, 14
    "0",
    "ab\x00cdef012345",  # NUL early: SQLite reads "ab"
    "\x00",
    "\x00abcdef01234",
    "ébcdef012345",  # non-ASCII, 12 characters
    "abcdef01234é",
    "ab🏛️cdef0123",
    "g00000000000",
    " abcdef01234",
    "abcdef01234 ",
    "abcdef012345\n",
    "~",
    "~~~~~~~~~~~~",
    "000000000000",
    "ffffffffffff",
    "0123456789ab",
    "f0f0f0f0f0f0",
]


def hex_ids(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [f"{rng.getrandbits(48):012x}" for _ in range(n)]


def make_rows(ids: Iterable[Any], seed: int = 0) -> list[dict[str, Any]]:
    """Rows with the given ids and hostile content, deterministically by seed."""
    rng = random.Random(seed)
    rows = []
    for i, row_id in enumerate(ids):
        rows.append(
            {
                "id": row_id,
                "meeting": "City Council",
                "date": "2024-01-02",
                "page": i,
                "text": rng.choice(HOSTILE_VALUES),
                "page_image": HOSTILE_VALUES[i % len(HOSTILE_VALUES)],
                "entities_json": rng.choice(HOSTILE_VALUES),
                "votes_json": HOSTILE_VALUES[(i * 7 + 3) % len(HOSTILE_VALUES)],
            }
        )
    return rows


def table(rows: list[dict[str, Any]], columns: tuple[str, ...] = COLUMNS) -> sqlite3.Connection:
    """An in-memory table of the look-alike's shape (tests/lookalike/data.py)."""
    conn = sqlite3.connect(":memory:")
    types = {"id": "TEXT PRIMARY KEY", "page": "INTEGER"}
    defs = ", ".join(f"{c} {types.get(c, 'TEXT')}" for c in columns)
    conn.execute(f"CREATE TABLE agendas ({defs})")
    for row in rows:
        values = [row.get(c) for c in columns]
        conn.execute(f"INSERT INTO agendas VALUES ({', '.join('?' for _ in columns)})", values)
    return conn


def bind(params: Mapping[str, Any]) -> dict[str, str]:
    """Parameters as Source.sql sends them: text verbatim, anything else as compact JSON."""
    return {
        k: v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))
        for k, v in params.items()
    }


def query(conn: sqlite3.Connection, sql: str, params: Mapping[str, Any]) -> list[dict[str, Any]]:
    cursor = conn.execute(sql, bind(params))
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def python_digest(rows: Iterable[Mapping[str, Any]]) -> dict[str, Bucket]:
    """The digest the SQL must give, from the rows in Python."""
    total: dict[str, Bucket] = {}
    for row in rows:
        bucket = bucket_of(row["id"])
        hi, lo = id_halves(row["id"]) if bucket != OTHER else (0, 0)
        total[bucket] = total.get(bucket, Bucket()) + Bucket(1, hi, lo, content_fp(row))
    return total


def sqlite_listing(
    conn: sqlite3.Connection, columns: tuple[str, ...], buckets: list[str]
) -> dict[str, int]:
    """Ids and fingerprints of some buckets, as the source lists them (bisect_sql)."""
    ask = Ask(LIST_DEPTH, tuple(buckets))
    rows = query(
        conn, bisect_sql({"agenda": "agendas"}, columns), {"h": HEX, **ask.params("agenda")}
    )
    return read_packed(rows, {"agenda": ask})["agenda"].listed


def sqlite_fp(value: Any, column: str = "page_image", row_id: str = "ab0000000000") -> int:
    """SQLite's fingerprint of a row holding `value` in one column (as listed)."""
    listed = sqlite_listing(table([{"id": row_id, column: value}]), COLUMNS, [row_id[:2]])
    assert list(listed) == [row_id]
    return listed[row_id]


def sqlite_bucket_fp(rows: list[dict[str, Any]]) -> int:
    """The fingerprint sum digest_sql gives one bucket's rows."""
    got = read_digest(query(table(rows), *digest_sql("agendas", COLUMNS, IdRange())))
    assert len(got) == 1, got
    return next(iter(got.values())).fp


def blob(data: bytes) -> dict[str, Any]:
    """A BLOB as Datasette 1.0 serves it."""
    return {"$base64": True, "encoded": base64.b64encode(data).decode()}


# ---- one row's fingerprint -----------------------------------------------------------------------


@pytest.mark.parametrize("column", ["page_image", "entities_json", "votes_json"])
@pytest.mark.parametrize(
    "value", HOSTILE_VALUES, ids=lambda v: repr(v)[:20] if v is not None else "NULL"
)
def test_content_fp_is_what_sqlite_computes(value, column):
    row = {"id": "ab0000000000", column: value}
    assert content_fp(row) == sqlite_fp(value, column)


@pytest.mark.parametrize(
    "data", [b"", b"plain", b"\xff\xfe\x00abc", b"\x80", "\u00e9\U0001f3db".encode(), b"a\x00b"]
)
def test_a_blob_fingerprints_as_its_bytes_on_both_sides(data):
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE agendas (id TEXT PRIMARY KEY, page_image, entities_json)")
    conn.execute("INSERT INTO agendas VALUES ('ab0000000000', ?, ?)", (data, b"\x80"))
    listed = sqlite_listing(conn, ("id", "page_image", "entities_json"), ["ab"])
    row = {"id": "ab0000000000", "page_image": blob(data), "entities_json": blob(b"\x80")}
    assert listed["ab0000000000"] == content_fp(row) != 0


def test_nul_counts_as_sqlite_reads_it():
    # length() stops at the first NUL; hex() and || read every byte: so does content_fp.
    for value in ("abc\x00anything", "\x00abc", "a\x00b\x00c"):
        assert content_fp({"id": "ab0000000000", "votes_json": value}) == sqlite_fp(
            value, "votes_json"
        )
    assert content_fp({"votes_json": "abc\x00x"}) != content_fp({"votes_json": "abc\x00y"})
    assert content_fp({"votes_json": ""}) != content_fp({}) == 0  # present but empty is not NULL


def test_the_fingerprint_of_a_row_depends_on_its_id():
    row = {"page_image": "/_agendas/City Council/2024-01-08/3.png"}
    first, second = ({**row, "id": i} for i in ("ab0000000001", "ab0000000002"))
    assert content_fp(first) != content_fp(second)
    assert content_fp(first) == value_fp(row) * id_factor("ab0000000001") % MODULUS
    assert content_fp({**row, "id": "NOT-HEX"}) == value_fp(row)  # the `~` bucket: factor 1
    assert content_fp(first) == sqlite_fp(row["page_image"], row_id="ab0000000001")


def test_numbers_are_fingerprinted_as_sqlite_reads_them_from_a_text_column():
    assert content_fp({"page_image": 12345}) == content_fp({"page_image": "12345"})
    assert content_fp({"id": "ab0000000000", "page_image": 12345}) == sqlite_fp(12345)


def test_a_bucket_sum_of_100000_long_rows_stays_inside_64_bits():
    assert MODULUS * 100_000 < 2**63
    assert max(id_factor("ffffffffffff"), MODULUS) * MODULUS < 2**63  # each row's product


# ---- the changes clerk really makes (bench/fingerprint.py measures their miss rates) -------------

TALLY = {"ayes": 7, "nays": 0, "abstain": None, "absent": None}
MEMBERS = [{"name": "Park", "vote": "aye"}, {"name": "Ward", "vote": "nay"}]
MOTION = {
    "motion_by": "Park",
    "seconded_by": "Ward",
    "result": "passed",
    "tally": TALLY,
    "individual_votes": MEMBERS,
    "raw_text": "Motion carried 7-0",
}
VOTES = json.dumps({"votes": [MOTION]})
ENTITIES = json.dumps({"persons": [{"text": "Jane Park", "confidence": 0.85}], "orgs": [],
                       "locations": []})  # fmt: skip


def votes_with(**changes: Any) -> str:
    return json.dumps({"votes": [{**MOTION, **changes}]})


CHANGES = {
    "empty to filled": ({"votes_json": json.dumps({"votes": []})}, {"votes_json": VOTES}),
    "entities emptied": (
        {"entities_json": ENTITIES},
        {"entities_json": json.dumps({"persons": [], "orgs": [], "locations": []})},
    ),
    "tally corrected": (
        {"votes_json": VOTES},
        {"votes_json": votes_with(tally={**TALLY, "ayes": 6, "nays": 1})},
    ),
    "ayes and nays exchanged": (
        {"votes_json": VOTES},
        {"votes_json": votes_with(tally={**TALLY, "ayes": 0, "nays": 7})},
    ),
    "name corrected": ({"votes_json": VOTES}, {"votes_json": votes_with(motion_by="Ward")}),
    "votes exchanged": (
        {"votes_json": VOTES},
        {
            "votes_json": votes_with(
                individual_votes=[{"name": "Park", "vote": "nay"}, {"name": "Ward", "vote": "aye"}]
            )
        },
    ),
    "upper case": ({"votes_json": VOTES}, {"votes_json": votes_with(motion_by="PARK")}),
    "escape changed": (
        {"entities_json": json.dumps({"persons": [{"text": "Jos\u00e9"}]})},
        {"entities_json": json.dumps({"persons": [{"text": "Jos\u00e8"}]})},
    ),
    "page_image at the same length": (
        {"page_image": "/_agendas/City Council/2024-01-08/3.png"},
        {"page_image": "/_agendas/City Council/2024-01-09/3.png"},
    ),
}


TALLY_54 = {**TALLY, "ayes": 5, "nays": 4}
MEMBERS_4 = [*MEMBERS, {"name": "Lee", "vote": "aye"}, {"name": "Kim", "vote": "aye"}]


def two_motions(**second: Any) -> str:
    """Two motions, the first a 5-4 vote: the second's bytes are none of them the first of their
    kind, so the fingerprint before the chains missed a reordering there."""
    first = {**MOTION, "tally": TALLY_54, "individual_votes": MEMBERS_4}
    return json.dumps({"votes": [first, {**first, **second}]})


# Reorderings the fingerprint v2 (counts and first positions) missed: they change no count and
# no first position. The chains and the tail see them.
REORDERED = {
    "votes exchanged in the second motion": (
        {"votes_json": two_motions()},
        {"votes_json": two_motions(individual_votes=[MEMBERS_4[i] for i in (0, 2, 1, 3)])},
    ),
    "5-4 read as 4-5 in the second motion": (
        {"votes_json": two_motions()},
        {"votes_json": two_motions(tally={**TALLY_54, "ayes": 4, "nays": 5})},
    ),
    "escape rewritten with the same digits": (
        {"entities_json": json.dumps({"persons": [{"text": "\u0131 Jos\u0113"}]})},
        {"entities_json": json.dumps({"persons": [{"text": "\u0131 Jos\u0131"}]})},
    ),
    "day 12 read as 21": (
        {"page_image": "/_agendas/City Council/2021-01-12/3.png"},
        {"page_image": "/_agendas/City Council/2021-01-21/3.png"},
    ),
}
CHANGES.update(REORDERED)


@pytest.mark.parametrize(("before", "after"), REORDERED.values(), ids=REORDERED.keys())
def test_the_fingerprint_v2_missed_these_reorderings(before, after):
    row_id = "ab0123456789"
    assert v2_content_fp({"id": row_id, **before}) == v2_content_fp({"id": row_id, **after})


@pytest.mark.parametrize(("before", "after"), CHANGES.values(), ids=CHANGES.keys())
def test_each_real_change_changes_the_fingerprint_in_python_and_in_sqlite(before, after):
    row_id = "ab0123456789"
    old, new = {"id": row_id, **before}, {"id": row_id, **after}
    assert content_fp(old) != content_fp(new)
    assert sqlite_bucket_fp([old]) == content_fp(old)
    assert sqlite_bucket_fp([new]) == content_fp(new)


@pytest.mark.parametrize(
    "change",
    [
        "tally corrected",
        "ayes and nays exchanged",
        "votes exchanged",
        "page_image at the same length",
    ],
)
def test_the_old_fingerprint_missed_these_changes(change):
    before, after = CHANGES[change]
    assert old_content_fp(before) == old_content_fp(after)


def test_two_rows_exchanging_their_values_change_the_bucket_sum():
    first = {"id": "ab0000000001", "votes_json": VOTES, "page_image": "/a/1.png"}
    second = {"id": "ab0000000002", "votes_json": votes_with(motion_by="Ward"), "page_image": "/b"}
    exchanged = [
        {**first, "votes_json": second["votes_json"]},
        {**second, "votes_json": first["votes_json"]},
    ]
    before = sqlite_bucket_fp([first, second])
    assert before == content_fp(first) + content_fp(second)
    assert sqlite_bucket_fp(exchanged) == sum(map(content_fp, exchanged)) != before
    assert old_content_fp(first) + old_content_fp(second) == sum(map(old_content_fp, exchanged))


def test_content_fp_of_a_row_is_what_sqlite_lists_for_it():
    rows = make_rows(hex_ids(len(HOSTILE_VALUES) * 3, seed=1), seed=1)
    conn = table(rows)
    buckets = sorted({bucket_of(r["id"]) for r in rows} - {OTHER})
    listed = sqlite_listing(conn, COLUMNS, buckets)
    assert listed == {r["id"]: content_fp(r) for r in rows}


def test_legacy_tables_fingerprint_only_the_columns_they_have():
    rows = [
        {k: v for k, v in row.items() if k in LEGACY_COLUMNS}
        for row in make_rows(hex_ids(40, seed=2), seed=2)
    ]
    conn = table(rows, LEGACY_COLUMNS)
    buckets = sorted({bucket_of(r["id"]) for r in rows} - {OTHER})
    listed = sqlite_listing(conn, LEGACY_COLUMNS, buckets)
    assert listed == {r["id"]: content_fp(r) for r in rows}
    assert listed == {
        r["id"]: content_fp({"id": r["id"], "page_image": r["page_image"]}) for r in rows
    }


def test_a_table_without_any_content_column_has_zero_fingerprints():
    rows = [{"id": i, "meeting": "M"} for i in [*hex_ids(5), None, "X"]]
    conn = table(rows, ("id", "meeting"))
    got = read_digest(query(conn, *digest_sql("agendas", ("id", "meeting"), IdRange())))
    assert got == python_digest(rows)
    assert {b.fp for b in got.values()} == {0}


# ---- ids and buckets -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row_id", "bucket"),
    [
        ("abcdef012345", "ab"),
        ("004351235980", "00"),
        ("123456789012", "12"),
        ("ABCDEF012345", OTHER),
        ("abcdef0123456", OTHER),
        ("abcdef01234", OTHER),
        ("abcdef012345\n", OTHER),
        ("abcdef012345\x00", OTHER),
        ("ébcdef012345", OTHER),
        ("", OTHER),
        (None, OTHER),
        (123456789012, OTHER),
    ],
)
def test_bucket_of(row_id, bucket):
    assert bucket_of(row_id) == bucket


def test_id_halves_are_the_two_24_bit_values():
    assert id_halves("abcdef012345") == (0xABCDEF, 0x012345)
    assert id_halves("ffffffffffff") == (2**24 - 1, 2**24 - 1)
    assert id_halves("000000000000") == (0, 0)


# ---- digest_sql over whole tables and id ranges --------------------------------------------------


def hostile_table_rows(seed: int = 0) -> list[dict[str, Any]]:
    return make_rows([*HOSTILE_IDS, *hex_ids(600, seed=seed)], seed=seed)


def sql_digest(conn: sqlite3.Connection, columns: tuple[str, ...], id_range: IdRange):
    sql, params = digest_sql("agendas", columns, id_range)
    assert params["h"] == "0123456789abcdef"
    return read_digest(query(conn, sql, params))


@pytest.mark.parametrize("legacy", [False, True], ids=["current", "legacy"])
def test_digest_of_a_whole_table_is_the_digest_of_its_rows(legacy):
    columns = LEGACY_COLUMNS if legacy else COLUMNS
    rows = [{k: v for k, v in r.items() if k in columns} for r in hostile_table_rows(seed=3)]
    conn = table(rows, columns)
    got = sql_digest(conn, columns, IdRange())
    expected = python_digest(rows)
    assert got == expected
    assert count(got) == len(rows)
    assert got[OTHER].n == sum(bucket_of(r["id"]) == OTHER for r in rows) > 20


def split_ranges(depth: int) -> list[IdRange]:
    ranges = [IdRange()]
    for _ in range(depth):
        ranges = [part for r in ranges for part in r.split()]
    return ranges


@pytest.mark.parametrize("depth", [1, 2])
@pytest.mark.parametrize("legacy", [False, True], ids=["current", "legacy"])
def test_digests_of_split_ranges_merge_to_the_digest_of_the_rows(depth, legacy):
    columns = LEGACY_COLUMNS if legacy else COLUMNS
    rows = [{k: v for k, v in r.items() if k in columns} for r in hostile_table_rows(seed=4)]
    conn = table(rows, columns)
    parts = [sql_digest(conn, columns, r) for r in split_ranges(depth)]
    assert len(parts) == 16**depth
    assert merge(parts) == python_digest(rows)
    # Each conforming bucket is answered by exactly one range: the cuts follow the hex digits.
    for bucket in {b for part in parts for b in part if b != OTHER}:
        assert sum(bucket in part for part in parts) == 1


@pytest.mark.parametrize("row_id", ["abcdef012345\x00", "abcdef012345\x00zz"])
def test_an_id_of_twelve_hex_digits_then_nul_is_in_the_same_bucket_on_both_sides(row_id):
    rows = make_rows([row_id, "abcdef012340"])
    conn = table(rows)
    assert sql_digest(conn, COLUMNS, IdRange()) == python_digest(rows)


def test_other_rows_include_an_id_of_twelve_hex_digits_then_nul():
    rows = make_rows(["abcdef012345\x00zz"])
    conn = table(rows)
    got = query(conn, other_rows_sql("agendas", 10), {"after": "0"})
    assert [r["id"] for r in got] == ["abcdef012345\x00zz"]


# ---- IdRange -------------------------------------------------------------------------------------


def test_split_of_the_whole_range_cuts_after_the_first_digit():
    parts = IdRange().split()
    assert parts[0] == IdRange(None, "1")
    assert parts[1] == IdRange("1", "2")
    assert parts[-1] == IdRange("f", None)
    assert [p.depth for p in parts] == [1] * 16


def test_split_of_the_first_range_keeps_null_in_its_first_part():
    parts = IdRange(None, "1").split()
    assert parts[0] == IdRange(None, "01")
    assert parts[-1] == IdRange("0f", "1")
    assert IdRange("f", None).split()[-1] == IdRange("ff", None)
    assert IdRange("a", "b").split()[0] == IdRange("a", "a1")
    assert {p.depth for p in parts} == {2}


@pytest.mark.parametrize("depth", [1, 2])
def test_split_ranges_cover_every_id_exactly_once(depth):
    ids = [*HOSTILE_IDS, *hex_ids(300, seed=5), "abcdef012345\x00zz", "\uffff", "f" * 13]
    rows = make_rows(ids)
    conn = table(rows)
    seen: list[int] = []
    ranges = split_ranges(depth)
    for number, id_range in enumerate(ranges):
        where, params = id_range.where()
        got = query(conn, f"select rowid, id from agendas where {where}", params)
        seen += [r["rowid"] for r in got]
        nulls = [r for r in got if r["id"] is None]
        assert not nulls or number == 0, f"NULL ids in range {number}: {id_range}"
        if number == 0:
            assert len(nulls) == 2
    assert sorted(seen) == list(range(1, len(rows) + 1))


def test_where_of_an_open_range_is_everything():
    assert IdRange().where() == ("1", {})
    assert IdRange().depth == 0


# ---- listings and other_rows_sql ----------------------------------------------------------------


def test_a_listing_holds_exactly_the_conforming_ids_of_the_buckets():
    rows = hostile_table_rows(seed=6)
    conn = table(rows)
    buckets = ["00", "12", "ab", "ff"]
    listed = sqlite_listing(conn, COLUMNS, buckets)
    expected = {r["id"]: content_fp(r) for r in rows if bucket_of(r["id"]) in buckets}
    assert listed == expected
    assert {"123456789012", "ffffffffffff"} <= set(listed)


@pytest.mark.parametrize("limit", [1, 2, 1000])
def test_other_rows_are_exactly_the_non_conforming_rows_by_rowid(limit):
    rows = hostile_table_rows(seed=7)
    conn = table(rows)
    got, after = [], 0
    while True:
        page = query(conn, other_rows_sql("agendas", limit), {"after": str(after)})
        for row in page:
            after = max(after, int(row.pop("civicband_rowid")))
        got += page
        if len(page) < limit:
            break
    expected = [r for r in rows if bucket_of(r["id"]) == OTHER]
    assert got == expected
    assert len(got) > 20


# ---- read_digest ---------------------------------------------------------------------------------


def test_read_digest_sums_repeated_buckets_and_reads_null_as_zero():
    rows = [
        {"bucket": "ab", "n": 2, "hi": 10, "lo": 20, "fp": 30},
        {"bucket": "ab", "n": 1, "hi": 1, "lo": 2, "fp": 3},
        {"bucket": OTHER, "n": 3, "hi": None, "lo": None, "fp": None},
    ]
    assert read_digest(rows) == {"ab": Bucket(3, 11, 22, 33), OTHER: Bucket(3, 0, 0, 0)}


@pytest.mark.parametrize("value", [1.5, "3", True, [1], 2.0])
@pytest.mark.parametrize("key", ["n", "hi", "lo", "fp"])
def test_read_digest_refuses_values_that_are_not_integers(key, value):
    row = {"bucket": "ab", "n": 1, "hi": 1, "lo": 1, "fp": 1, key: value}
    with pytest.raises(DigestError, match=f"non-integer {key}"):
        read_digest([row])


@pytest.mark.parametrize("bucket", [None, 12, b"ab", ["ab"]])
def test_read_digest_refuses_buckets_that_are_not_text(bucket):
    with pytest.raises(DigestError, match="bucket that is not text"):
        read_digest([{"bucket": bucket, "n": 1, "hi": 0, "lo": 0, "fp": 0}])


# ---- comparing digests and listings --------------------------------------------------------------


def test_differing_lists_buckets_in_order_either_side_missing_counts_as_empty():
    source = {"ab": Bucket(1, 2, 3, 4), "00": Bucket(1, 1, 1, 1), OTHER: Bucket(2, 0, 0, 9)}
    local = {"ab": Bucket(1, 2, 3, 5), "ff": Bucket(1, 1, 1, 1), "11": Bucket()}
    assert differing(source, local) == ["00", "ab", "ff", OTHER]
    assert differing(source, dict(source)) == []
    assert differing({"ab": Bucket()}, {}) == []


@pytest.mark.parametrize("field", ["n", "hi", "lo", "fp"])
def test_differing_sees_each_field(field):
    base = Bucket(5, 6, 7, 8)
    other = Bucket(**{**base.__dict__, field: getattr(base, field) + 1})
    assert differing({"ab": base}, {"ab": other}) == ["ab"]


def test_compare_finds_missing_extra_stale_and_stale_rejections():
    a = [f"a{i:011x}" for i in range(8)]
    source = {a[1]: 1, a[2]: 2, a[3]: 3, a[4]: 4, a[5]: 5}
    local = {a[1]: 1, a[2]: 20, a[6]: 6}
    rejected = {a[3]: 3, a[7]: 7}
    difference = compare(source, local, rejected)
    assert difference == Difference(
        missing=[a[4], a[5]], extra=[a[6]], stale=[a[2]], stale_rejections=[a[7]]
    )
    assert difference.to_fetch == [a[2], a[4], a[5]]


def test_compare_of_equal_listings_is_empty():
    listing = {f"{i:012x}": i for i in range(20)}
    assert compare(listing, dict(listing), {}) == Difference([], [], [], [])


def test_a_rejected_row_changed_at_the_source_is_fetched_again():
    difference = compare({"ab0000000001": 5}, {}, {"ab0000000001": 4})
    assert difference.to_fetch == ["ab0000000001"]


def test_difference_add_concatenates_each_list_and_to_fetch_is_sorted_and_unique():
    a, b, c, d = (f"{x}00000000000" for x in "abcd")
    one = Difference([b], ["x"], [a], ["r1"])
    two = Difference([c, a], [], [d], ["r2"])
    total = one + two
    assert total == Difference([b, c, a], ["x"], [a, d], ["r1", "r2"])
    assert total.to_fetch == [a, b, c, d]
    assert Difference([], ["x"], [], ["r"]).to_fetch == []


def test_to_fetch_leaves_out_what_is_not_an_id_of_twelve_hex_digits():
    # The `~` bucket's rows are stored whole from other_rows; its labels are not ids to ask for.
    labels = ["'X' (not 12 hex digits)", "None (not 12 hex digits)", "ABCDEF012345"]
    assert Difference(labels, [], ["short"], []).to_fetch == []


@pytest.mark.parametrize("depth", [0, MAX_SPLIT_DEPTH])
def test_the_longest_digest_url_fits_urllength_limit_as_scrapy_sends_it(depth):
    # The longest name DNS allows; a range as deep as Source.digest splits; both dialects.
    root = f"https://{'x' * 60}.ca.civic.band"
    id_range = split_ranges(depth)[-1]
    for dialect in ("0.65", "1.0"):
        sql, params = digest_sql("minutes", COLUMNS, id_range)
        url = sql_url(root, dialect, sql, **params)
        assert Request(url).url == url  # Scrapy sends it as built: the length check holds
        assert len(url) <= URLLENGTH_LIMIT, len(url)


def test_a_bucket_is_seen_whole_only_when_its_ids_are_the_sources():
    def ids(*values: str) -> Bucket:
        return Bucket(
            len(values), sum(int(v[:6], 16) for v in values), sum(int(v[6:], 16) for v in values)
        )

    source = {"ab": ids("ab0000000001", "ab0000000002"), "cd": ids("cd0000000001"), "~": Bucket(3)}
    seen = {"ab": ids("ab0000000001", "ab0000000003"), "cd": ids("cd0000000001"), "~": Bucket(3)}
    whole = seen_whole(source, seen)
    assert "cd" in whole and "00" in whole  # the same ids; no ids on either side
    assert "ab" not in whole  # as many ids, other ones: the pass saw another site
    assert "~" not in whole  # no id sums there: a count proves nothing
    assert "ab" not in seen_whole(source, {"ab": ids("ab0000000001")})  # seen short
    assert len(whole) == 255
