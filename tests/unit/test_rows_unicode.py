"""Rows with text PostgreSQL cannot hold: lone surrogates, NUL in ids, raw text kept losslessly."""

from __future__ import annotations

import json

import pytest

from civicband.digest import content_fp
from civicband.rows import INVALID_ID, MAX_ID_LENGTH, clean_page, clean_row, raw_text

SURROGATE_REASON = "text is not valid Unicode (half a surrogate pair)"
GOOD = {
    "id": "a1b2c3d4e5f6",
    "meeting": "City Council",
    "date": "2024-01-02",
    "page": 3,
    "text": "Call to order",
    "page_image": "/_agendas/City Council/2024-01-02/3.png",
    "entities_json": '{"people": []}',
    "votes_json": None,
}


@pytest.mark.parametrize(
    "change",
    [
        {"text": "x\ud800y"},
        {"text": "\udfff"},
        {"meeting": "Council \udc00"},
        {"page_image": "/a\ud83c.png"},
        {"entities_json": '{"n": "\udbff"}'},
        {"votes_json": "\ud800\ud800"},
        {"date": "2024-01-02\ud800"},
        {"extra column": "\ud800"},
        {"\ud800": "a key"},
    ],
    ids=repr,
)
def test_a_lone_surrogate_anywhere_is_rejected_when_json_read_the_page(change):
    row = {**GOOD, **change}
    clean, rejection, removed = clean_row(row, unicode_checked=False)
    assert clean is None and removed == 0
    assert rejection.reason == SURROGATE_REASON
    assert rejection.row_id == "a1b2c3d4e5f6"
    assert rejection.content_fp == content_fp(row)
    assert json.loads(rejection.raw) == row  # the escapes keep it whole
    rejection.raw.encode("utf-8")  # and PostgreSQL can hold it


def test_a_page_orjson_read_is_not_searched_for_surrogates():
    # orjson refuses lone surrogates, so a page it read cannot hold one: no search is made.
    clean, rejection, _ = clean_row({**GOOD, "text": "x\ud800y"}, unicode_checked=True)
    assert rejection is None and clean.text == "x\ud800y"


@pytest.mark.parametrize(
    "change",
    [{"page": "3"}, {"text": "x\ud800\x00y"}, {"meeting": "Council\x00 \udc00"}],
    ids=["string page", "with NUL", "NUL meeting"],
)
def test_rows_of_an_orjson_page_off_the_fast_path_are_not_searched_either(change):
    clean, rejection, _ = clean_row({**GOOD, **change}, unicode_checked=True)
    assert rejection is None and clean is not None


def test_valid_text_read_by_json_is_kept():
    row = {**GOOD, "text": "🏛️ e\u0301 مجلس", "meeting": "Séance 👩‍⚖️"}
    clean, rejection, _ = clean_row(row, unicode_checked=False)
    assert rejection is None
    assert (clean.text, clean.meeting_name) == ("🏛️ e\u0301 مجلس", "Séance 👩‍⚖️")


def test_a_surrogate_in_the_id_is_escaped_in_the_rejection():
    clean, rejection, _ = clean_row({**GOOD, "id": "ab\ud800cd"}, unicode_checked=False)
    assert clean is None
    # The id is what is wrong: shown escaped, it names no page (a valid id may read the same).
    assert (rejection.row_id, rejection.reason) == ("ab\\ud800cd", INVALID_ID)
    assert rejection.page_id is None


def test_a_surrogate_in_the_text_names_the_page_of_its_valid_id():
    clean, rejection, _ = clean_row({**GOOD, "text": "a\ud800"}, unicode_checked=False)
    assert clean is None
    assert (rejection.page_id, rejection.reason) == (GOOD["id"], SURROGATE_REASON)


def test_a_page_of_json_read_rows_quarantines_only_the_surrogate_rows():
    rows = [GOOD, {**GOOD, "id": "b" * 12, "text": "\ud800"}, {**GOOD, "id": "c" * 12}]
    page = clean_page(rows, unicode_checked=False)
    assert [r.id for r in page.clean] == ["a1b2c3d4e5f6", "c" * 12]
    assert [(r.row_id, r.reason) for r in page.rejected] == [("b" * 12, SURROGATE_REASON)]
    assert clean_page(rows, unicode_checked=True).rejected == []


@pytest.mark.parametrize(
    ("row_id", "shown"),
    [
        ("ab\x00cd", "ab\\u0000cd"),
        ("\x00", "\\u0000"),
        ("abcdef012345\x00", "abcdef012345\\u0000"),
        ("\x00" * 300, ("\\u0000" * 300)[:MAX_ID_LENGTH]),
        ("x" * 201, "x" * MAX_ID_LENGTH),
    ],
)
@pytest.mark.parametrize("checked", [True, False])
def test_a_rejected_id_with_nul_is_escaped_and_cut(row_id, shown, checked):
    clean, rejection, _ = clean_row({**GOOD, "id": row_id}, unicode_checked=checked)
    assert clean is None
    assert rejection.reason == INVALID_ID
    assert rejection.row_id == shown
    assert rejection.page_id is None  # shown, it may read as a valid id: it names no page
    assert "\x00" not in rejection.row_id


@pytest.mark.parametrize("checked", [True, False])
def test_a_null_id_is_rejected_as_none(checked):
    _, rejection, _ = clean_row({**GOOD, "id": None}, unicode_checked=checked)
    assert (rejection.row_id, rejection.reason) == (None, "missing or invalid id")


@pytest.mark.parametrize(
    "row",
    [
        {**GOOD, "text": "a\x00b"},
        {**GOOD, "text": "\ud800 and \x00 and 🏛️", "id": "a\x00"},
        {**GOOD, "\x00key": "\udfff"},
        ["a\x00", "\ud800"],
        "\x00\ud800",
        {**GOOD, "text": "literal \\u0000 and \\ud800 text"},
    ],
    ids=["nul", "both", "in a key", "a list", "a string", "literal escapes"],
)
def test_raw_text_escapes_nul_and_surrogates_and_round_trips(row):
    text = raw_text(row)
    assert "\x00" not in text
    text.encode("utf-8")  # valid UTF-8: no lone surrogate left
    assert json.loads(text) == row


def test_raw_text_keeps_valid_text_as_it_is():
    text = raw_text({"text": "🏛️ é مجلس"})
    assert text == '{"text": "🏛️ é مجلس"}'


def test_raw_text_writes_values_json_cannot_as_their_str_escaped():
    class Odd:
        def __str__(self) -> str:
            return "Odd(\x00\ud800)"

    assert raw_text({"a": float("nan")}) == '{"a": NaN}'
    assert raw_text({"b": Odd()}) == '{"b": "Odd(\\u0000\\ud800)"}'


def test_raw_text_of_what_json_cannot_write_at_all_is_its_repr_escaped():
    class Odd:
        def __repr__(self) -> str:
            return "Odd(\x00\ud800)"

    assert raw_text({(1, 2): "a"}) == "{(1, 2): 'a'}"
    assert raw_text({(1, 2): Odd()}) == "{(1, 2): Odd(\\u0000\\ud800)}"
