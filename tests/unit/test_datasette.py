"""The source's dialects: table pages, SQL answers and error bodies of Datasette 0.65 and 1.0.

The bodies are the look-alike README's literal examples (tests/lookalike/README.md), each
observed on real Datasette 0.65.5 and 1.0a28.
"""

from __future__ import annotations

import json

import orjson
import pytest

from civicband.datasette import (
    SourceError,
    TablePage,
    dialect_of_body,
    is_interrupted,
    lacks_column,
    lacks_query_endpoint,
    page_size_limit,
    parse_object,
    parse_sql,
    parse_table_page,
)

COLUMNS = ["id", "meeting", "date", "page", "text", "page_image", "entities_json", "votes_json"]
FIRST = [
    "004351235980",
    "Special City Council",
    "2023-03-14",
    1,
    "motion safety",
    "/_agendas/Special City Council/2023-03-14/0001.png",
    None,
    None,
]
SECOND = [
    "00d5ee9e5f1a",
    "City Council",
    "2023-03-15",
    2,
    "call to order",
    "/_agendas/City Council/2023-03-15/0002.png",
    '{"persons": ["Garcia"], "orgs": [], "locations": []}',
    '{"votes": []}',
]
OBJECTS = [dict(zip(COLUMNS, FIRST, strict=True)), dict(zip(COLUMNS, SECOND, strict=True))]

PAGE_10 = (
    '{"ok": true, "next": "00d5ee9e5f1a,00d5ee9e5f1a", "rows": ['
    + ", ".join(json.dumps(row) for row in OBJECTS)
    + '], "truncated": false}'
).encode()
PAGE_065 = json.dumps(
    {
        "database": "meetings",
        "table": "agendas",
        "is_view": False,
        "human_description_en": "sorted by id",
        "rows": [FIRST, SECOND],
        "truncated": False,
        "filtered_table_rows_count": 254,
        "expanded_columns": [],
        "expandable_columns": [],
        "columns": COLUMNS,
        "primary_keys": ["id"],
        "units": {},
        "query": {"sql": "select id, meeting from agendas order by id limit 3", "params": {}},
        "facet_results": {},
        "suggested_facets": [],
        "next": "00d5ee9e5f1a,00d5ee9e5f1a",
        "next_url": "http://127.0.0.1:36613/oakland.ca/meetings/agendas.json?_size=2&_next=00d5ee9e5f1a%2C00d5ee9e5f1a&_sort=id",
        "private": False,
        "allow_execute_sql": True,
        "query_ms": 18.2,
    }
).encode()
LAST_10 = b'{"ok": true, "next": null, "rows": [], "truncated": false}'
LAST_065 = (
    b'{"database": "meetings", "table": "agendas", "rows": [], "truncated": false,'
    b' "filtered_table_rows_count": 254, "columns": ["id"], "next": null, "next_url": null}'
)
COUNT_10 = b'{"ok": true, "rows": [{"count(*)": 254}], "truncated": false}'
COUNT_065 = (
    b'{"ok": true, "database": "meetings", "query_name": null, "rows": [[254]], "truncated": false,'
    b' "columns": ["count(*)"], "query": {"sql": "select count(*) from agendas", "params": {}},'
    b' "error": null, "private": false, "allow_execute_sql": true, "query_ms": 0.6}'
)
BAD_SIZE = b'{"ok": false, "error": "_size must be <= 1000", "status": 400, "title": null}'
BAD_SIZE_50 = b'{"ok": false, "error": "_size must be <= 50", "status": 400, "title": null}'
BAD_SIZE_TEXT = (
    b'{"ok": false, "error": "_size must be a positive integer", "status": 400, "title": null}'
)
INTERRUPTED_10 = (
    b'{"ok": false, "error": "QueryInterrupted: interrupted", "status": 500, "title": null}'
)
INTERRUPTED_400 = (
    b'{"ok": false, "error": "<p>SQL query took too long. The time limit is controlled by the\\n'
    b'<a href=\\"https://docs.datasette.io/en/stable/settings.html#sql-time-limit-ms\\">'
    b'sql_time_limit_ms</a>\\nconfiguration option.</p>\\n<textarea style=\\"width: 90%\\">'
    b'select id, page from agendas order by date desc limit 2</textarea>\\n<script></script>",'
    b' "status": 400, "title": "SQL Interrupted"}'
)
NO_QUERY_ENDPOINT = (
    b'{"ok": false, "error": "no such table: -", "status": 400, "title": "Invalid SQL"}'
)
NO_COLUMN = (
    b'{"ok": false, "error": "no such column: entities_json", "status": 400,'
    b' "title": "Invalid SQL"}'
)
NOT_FOUND = b'{"ok": false, "error": "Table not found", "status": 404, "title": null}'
RATE_LIMITED = (
    b'{"error": "rate_limit_exceeded", "message": "Rate limit exceeded. Maximum 15 requests'
    b' per minute.", "get_api_key": "https://civic.observer/api-keys"}'
)
BOT_WALL = b"<html><head><title>Access denied</title></head><body>Access denied</body></html>"
ERRORS = [
    BAD_SIZE,
    BAD_SIZE_TEXT,
    INTERRUPTED_10,
    INTERRUPTED_400,
    NO_QUERY_ENDPOINT,
    NO_COLUMN,
    NOT_FOUND,
]


def page_of(rows: bytes) -> bytes:
    """A 1.0 last page holding these rows (JSON text)."""
    return b'{"ok": true, "next": null, "rows": ' + rows + b', "truncated": false}'


def test_the_bodies_are_json():
    for body in [PAGE_10, PAGE_065, LAST_10, LAST_065, COUNT_10, COUNT_065, *ERRORS, RATE_LIMITED]:
        assert isinstance(json.loads(body), dict)


# ---- table pages ---------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [PAGE_10, PAGE_065], ids=["1.0", "0.65"])
def test_a_table_page_of_either_line_reads_as_objects(body):
    page = parse_table_page(body)
    assert (page.rows, page.next, page.truncated) == (OBJECTS, "00d5ee9e5f1a,00d5ee9e5f1a", False)
    # 0.65's query_ms is a float, so orjson's answer is not used there: json reads the page.
    assert page.unicode_checked is (body is PAGE_10)


@pytest.mark.parametrize("body", [LAST_10, LAST_065], ids=["1.0", "0.65"])
def test_the_last_page_has_no_next(body):
    assert parse_table_page(body) == TablePage(rows=[], next=None, truncated=False)
    assert parse_table_page(body).unicode_checked is True


def test_dialect_of_body():
    assert dialect_of_body(PAGE_10) == "1.0"
    assert dialect_of_body(b"  \n" + LAST_10) == "1.0"
    assert dialect_of_body(PAGE_065) == "0.65"


@pytest.mark.parametrize(("value", "read"), [("true", True), ("false", False), ('"yes"', None)])
def test_truncated_is_read_only_when_it_is_a_boolean(value, read):
    body = f'{{"ok": true, "next": null, "rows": [], "truncated": {value}}}'.encode()
    assert parse_table_page(body).truncated is read


def test_a_page_that_does_not_say_truncated_reads_none():
    assert parse_table_page(b'{"ok": true, "next": null, "rows": []}').truncated is None


def test_a_lone_surrogate_is_read_by_json_and_marked_unchecked():
    body = page_of(b'[{"id": "a", "text": "x\\ud800y"}]')
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(body)
    page = parse_table_page(body)
    assert page.rows == [{"id": "a", "text": "x\ud800y"}]
    assert page.unicode_checked is False


def test_a_surrogate_pair_is_valid_unicode_and_checked():
    body = page_of(b'[{"text": "\\ud83c\\udfdb \\u0000"}]')
    page = parse_table_page(body)
    assert page.rows == [{"text": "🏛 \x00"}]
    assert page.unicode_checked is True


def test_integers_beyond_64_bits_are_read_exactly():
    body = page_of(b'[{"page": 123456789012345678901234567890}]')
    page = parse_table_page(body)
    assert page.rows[0]["page"] == 123456789012345678901234567890
    assert page.unicode_checked is False


@pytest.mark.parametrize(
    ("next_value", "read"), [("null", None), ('""', None), ("12", "12"), ('"a,b"', "a,b")]
)
def test_next_is_a_token_or_none(next_value, read):
    body = f'{{"ok": true, "next": {next_value}, "rows": [], "truncated": false}}'.encode()
    assert parse_table_page(body).next == read


def test_an_array_row_of_the_wrong_length_stays_a_list():
    body = json.dumps({"columns": ["id", "page"], "rows": [["a", 1], ["b"], ["c", 2, 3]]}).encode()
    assert parse_table_page(body).rows == [{"id": "a", "page": 1}, ["b"], ["c", 2, 3]]


@pytest.mark.parametrize(
    ("body", "says", "retryable"),
    [
        (b'{"rows": [[1, 2]]}', "rows are arrays but there are no columns", True),
        (b'{"ok": true, "next": null}', "answer is JSON without a rows list", True),
        (b'{"ok": true, "rows": {"a": 1}}', "answer is JSON without a rows list", True),
        (b"[1, 2]", "answer is JSON without a rows list", True),
        (NOT_FOUND, "answer is JSON without a rows list", True),
        (b'{"ok": false, "error": "boom", "rows": []}', "site says: 'boom'", False),
        (BOT_WALL, "answer is HTML", True),
        (b"<!DOCTYPE html><html></html>", "answer is HTML", True),
        (b"Internal Server Error", "answer is not JSON", True),
        (b"", "answer is not JSON", True),
        (b'{"ok": true, "rows": [], "truncated": fal', "answer is not JSON", True),
    ],
)
def test_anything_else_is_an_error_never_an_empty_page(body, says, retryable):
    with pytest.raises(SourceError, match=f"^{says}") as raised:
        parse_table_page(body)
    assert raised.value.retryable is retryable


# ---- SQL answers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [COUNT_10, COUNT_065], ids=["1.0", "0.65"])
def test_an_sql_answer_of_either_line_reads_as_objects(body):
    page = parse_sql(body)
    assert page.rows == [{"count(*)": 254}]
    assert page.truncated is False


def test_a_truncated_sql_answer_says_so():
    body = b'{"ok": true, "rows": [{"n": 1}], "truncated": true}'
    assert parse_sql(body).truncated is True


@pytest.mark.parametrize(
    "body",
    [
        b'{"ok": true, "rows": [{"n": 1}]}',
        b'{"ok": true, "rows": [{"n": 1}], "truncated": null}',
        b'{"ok": true, "rows": [], "truncated": "false"}',
    ],
)
def test_an_sql_answer_that_does_not_say_whether_it_is_complete_is_refused(body):
    with pytest.raises(SourceError, match="does not say whether it is complete"):
        parse_sql(body)


@pytest.mark.parametrize(
    "body",
    [
        b'{"ok": true, "rows": [{"n": 1}, [2]], "truncated": false}',
        b'{"ok": true, "rows": [{"n": 1}, "two"], "truncated": false}',
        b'{"ok": true, "rows": [{"n": 1}, null], "truncated": false}',
        b'{"rows": [[1], [2, 3]], "columns": ["n"], "truncated": false}',
    ],
)
def test_an_sql_answer_with_rows_that_are_not_objects_is_refused(body):
    with pytest.raises(SourceError, match="rows that are not objects"):
        parse_sql(body)


# ---- error bodies of both lines ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "limit"),
    [
        (400, BAD_SIZE, 1000),
        (400, BAD_SIZE_50, 50),
        (200, BAD_SIZE, None),
        (500, BAD_SIZE, None),
        (400, BAD_SIZE_TEXT, None),
        (400, NO_QUERY_ENDPOINT, None),
        (400, INTERRUPTED_400, None),
        (200, PAGE_10, None),
    ],
)
def test_page_size_limit(status, body, limit):
    assert page_size_limit(status, body) == limit


@pytest.mark.parametrize(
    ("status", "body", "lacks"),
    [
        (400, NO_QUERY_ENDPOINT, True),  # 0.65 reads /-/query as the table "-"
        (404, NO_QUERY_ENDPOINT, False),
        (400, NO_COLUMN, False),
        (400, INTERRUPTED_400, False),
        (404, NOT_FOUND, False),
        (200, COUNT_10, False),
        (200, COUNT_065, False),
    ],
)
def test_lacks_query_endpoint(status, body, lacks):
    assert lacks_query_endpoint(status, body) is lacks


@pytest.mark.parametrize(
    ("status", "body", "lacks"),
    [
        (400, NO_COLUMN, True),
        (400, b'{"ok": false, "error": "no such column: votes_json", "status": 400}', True),
        # Datasette 0.65 echoes the query's SQL (the fingerprint's, thousands of characters)
        # before its error.
        (400, b'{"query": {"sql": "' + b"x" * 9000 + b'"}, "error": "no such column: v"}', True),
        (200, NO_COLUMN, False),
        (500, NO_COLUMN, False),
        (400, NO_QUERY_ENDPOINT, False),
        (400, BAD_SIZE, False),
        (400, INTERRUPTED_400, False),
    ],
)
def test_lacks_column(status, body, lacks):
    assert lacks_column(status, body) is lacks


@pytest.mark.parametrize(
    ("status", "body", "interrupted"),
    [
        (500, INTERRUPTED_10, True),  # a table page on 1.0
        (400, INTERRUPTED_400, True),  # a table page on 0.65, SQL on both
        (200, INTERRUPTED_10, False),
        (503, INTERRUPTED_10, False),
        (400, BAD_SIZE, False),
        (400, NO_COLUMN, False),
        (400, NO_QUERY_ENDPOINT, False),
        (404, NOT_FOUND, False),
        (500, b"Internal Server Error", False),
        (402, RATE_LIMITED, False),
    ],
)
def test_is_interrupted(status, body, interrupted):
    assert is_interrupted(status, body) is interrupted


# ---- parse_object --------------------------------------------------------------------------------


def test_parse_object_reads_any_object():
    assert parse_object(b'{"database": "meetings", "tables": []}') == {
        "database": "meetings",
        "tables": [],
    }
    assert parse_object(PAGE_065)["query_ms"] == 18.2


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"[]", "answer is JSON but not an object"),
        (b'"text"', "answer is JSON but not an object"),
        (b"null", "answer is JSON but not an object"),
        (BOT_WALL, "answer is HTML"),
        (b"nope", "answer is not JSON"),
        (b"\xff\xfe{}", "answer is not JSON"),
    ],
)
def test_parse_object_refuses_anything_else(body, says):
    with pytest.raises(SourceError, match=f"^{says}") as raised:
        parse_object(body)
    assert raised.value.retryable is True


def test_an_html_answer_says_its_title():
    with pytest.raises(SourceError) as raised:
        parse_table_page(
            b"<!doctype html>\n<html><head>\n<title> Just a moment... </title>" + b" " * 99
        )
    assert str(raised.value).endswith("titled 'Just a moment...'"), raised.value
    with pytest.raises(SourceError) as raised:
        parse_table_page(BOT_WALL)
    assert "titled 'Access denied'" in str(raised.value)
