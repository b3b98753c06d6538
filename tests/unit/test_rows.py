"""Row rules: what is stored, what is quarantined and why, what is cleaned."""

import datetime
import json

import pytest

from civicband.digest import MODULUS, content_fp, id_factor, value_fp
from civicband.rows import clean_page, clean_row

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


def test_good_row_is_kept_with_its_values():
    clean, rejection, removed = clean_row(GOOD)
    assert rejection is None and removed == 0
    assert clean.as_tuple() == (
        "a1b2c3d4e5f6",
        "City Council",
        datetime.date(2024, 1, 2),
        3,
        "Call to order",
        "/_agendas/City Council/2024-01-02/3.png",
        '{"people": []}',
        None,
        content_fp(GOOD),
    )
    assert clean.content_fp == value_fp(GOOD) * id_factor("a1b2c3d4e5f6") % MODULUS != 0


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"id": None}, "missing or invalid id"),
        ({"id": ""}, "missing or invalid id"),
        ({"id": " abc"}, "missing or invalid id"),
        ({"id": "ab\x00c"}, "missing or invalid id"),
        ({"id": ["x"]}, "missing or invalid id"),
        ({"meeting": None}, "missing meeting"),
        ({"meeting": "   "}, "missing meeting"),
        ({"date": None}, "missing date"),
        ({"date": "2024-13-45"}, "date is not a valid YYYY-MM-DD"),
        ({"date": "2024-02-30"}, "date is not a valid YYYY-MM-DD"),
        ({"date": "02/01/2024"}, "date is not a valid YYYY-MM-DD"),
        ({"date": "20240102"}, "date is not a valid YYYY-MM-DD"),
        ({"page": "three"}, "page is not an integer"),
        ({"page": 2**40}, "page is not an integer"),
    ],
)
def test_bad_rows_are_rejected_with_reason_and_raw(change, reason):
    row = {**GOOD, **change}
    clean, rejection, _ = clean_row(row)
    assert clean is None
    assert rejection.reason == reason
    assert json.loads(rejection.raw.replace("\\u0000", "")) is not None
    assert "\x00" not in rejection.raw


def test_missing_key_is_like_null():
    row = dict(GOOD)
    del row["date"]
    assert clean_row(row)[1].reason == "missing date"


def test_nul_characters_are_removed_and_counted():
    clean, rejection, removed = clean_row({**GOOD, "text": "a\x00b\x00", "meeting": "C\x00C"})
    assert rejection is None
    assert clean.text == "ab" and clean.meeting_name == "CC"
    assert removed == 3


def test_invalid_json_keeps_the_row_and_its_text():
    clean, rejection, _ = clean_row({**GOOD, "votes_json": "{not json"})
    assert rejection is None
    assert clean.votes_json == "{not json"


def test_numeric_id_and_string_page_are_read_not_guessed():
    clean, _, _ = clean_row({**GOOD, "id": 123456789012, "page": "7"})
    assert clean.id == "123456789012" and clean.page_number == 7


def test_legacy_rows_without_json_columns_are_fine():
    row = {k: v for k, v in GOOD.items() if k not in ("entities_json", "votes_json")}
    clean, rejection, _ = clean_row(row)
    assert rejection is None and clean.entities_json is None and clean.votes_json is None


def test_page_keeps_good_rows_and_quarantines_the_rest():
    rows = [GOOD, {**GOOD, "id": "b" * 12, "date": "bad"}, "not a row", {**GOOD}]
    page = clean_page(rows)
    assert [row.id for row in page.clean] == ["a1b2c3d4e5f6"]
    assert [r.reason for r in page.rejected] == [
        "date is not a valid YYYY-MM-DD",
        "row is not an object",
        "duplicate id within one page",
    ]
