"""Validate and clean one source row: pure functions, so every rule is unit-tested alone."""

from __future__ import annotations

import datetime
import json
import re
from dataclasses import dataclass, field
from typing import Any

DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
MAX_ID_LENGTH = 200
TEXT_COLUMNS = ("meeting", "text", "page_image", "entities_json", "votes_json")
JSON_COLUMNS = ("entities_json", "votes_json")
PG_INTEGER = 2**31 - 1


@dataclass(frozen=True)
class CleanRow:
    """A row ready for COPY, in the staging table's column order."""

    id: str
    meeting_name: str
    meeting_date: datetime.date
    page_number: int | None
    text: str | None
    page_image: str | None
    entities_json: str | None
    votes_json: str | None

    def as_tuple(self) -> tuple[Any, ...]:
        """The COPY row."""
        return (
            self.id,
            self.meeting_name,
            self.meeting_date,
            self.page_number,
            self.text,
            self.page_image,
            self.entities_json,
            self.votes_json,
        )


@dataclass(frozen=True)
class Rejection:
    """A source row we could not store, with why and its raw content."""

    row_id: str | None
    reason: str
    raw: str


@dataclass
class PageRows:
    """One page of rows after cleaning: what to store, what to quarantine, what was fixed."""

    clean: list[CleanRow] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    nul_removed: int = 0
    invalid_json: int = 0


def raw_text(row: Any) -> str:
    """The row as the source sent it, kept losslessly for rejected_rows."""
    try:
        text = json.dumps(row, ensure_ascii=False, sort_keys=True, default=str)
    except (TypeError, ValueError):
        text = repr(row)
    # PostgreSQL text cannot hold NUL; the escaped form keeps it visible.
    return text.replace("\x00", "\\u0000")


def _strip_nul(value: Any) -> tuple[Any, int]:
    if isinstance(value, str) and "\x00" in value:
        return value.replace("\x00", ""), value.count("\x00")
    return value, 0


def _as_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _parse_date(value: Any) -> datetime.date | None:
    if not isinstance(value, str) or not DATE.match(value):
        return None
    try:
        return datetime.date.fromisoformat(value)
    except ValueError:
        return None


def _parse_id(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if not isinstance(value, str):
        return None
    if "\x00" in value or not value.strip() or value != value.strip():
        return None
    if len(value) > MAX_ID_LENGTH:
        return None
    return value


def _parse_page(value: Any) -> tuple[bool, int | None]:
    if value is None or value == "":
        return True, None
    if isinstance(value, bool):
        return False, None
    if isinstance(value, int):
        return abs(value) <= PG_INTEGER, value
    if isinstance(value, str) and re.fullmatch(r"-?\d{1,10}", value.strip()):
        number = int(value)
        return abs(number) <= PG_INTEGER, number
    return False, None


def clean_row(row: Any) -> tuple[CleanRow | None, Rejection | None, int, bool]:
    """Check one row: (clean row, or its rejection), NULs removed, and whether JSON was invalid."""
    if not isinstance(row, dict):
        return None, Rejection(None, "row is not an object", raw_text(row)), 0, False
    removed = 0
    # NULs are removed from text only: an id or date holding one is invalid, not repaired.
    values: dict[str, Any] = {"id": row.get("id"), "date": row.get("date")}
    for column in TEXT_COLUMNS:
        values[column], count = _strip_nul(row.get(column))
        removed += count
    row_id = _parse_id(values["id"])
    raw = raw_text(row)
    shown_id = None if values["id"] is None else str(values["id"])[:MAX_ID_LENGTH]
    if row_id is None:
        return None, Rejection(shown_id, "missing or invalid id", raw), removed, False
    meeting = _as_text(values["meeting"])
    if meeting is None or not meeting.strip():
        return None, Rejection(row_id, "missing meeting", raw), removed, False
    if values["date"] is None or values["date"] == "":
        return None, Rejection(row_id, "missing date", raw), removed, False
    meeting_date = _parse_date(values["date"])
    if meeting_date is None:
        return None, Rejection(row_id, "date is not a valid YYYY-MM-DD", raw), removed, False
    page_ok, page_number = _parse_page(row.get("page"))
    if not page_ok:
        return None, Rejection(row_id, "page is not an integer", raw), removed, False
    invalid_json = False
    for column in JSON_COLUMNS:
        value = values[column]
        if isinstance(value, str) and value:
            try:
                json.loads(value)
            except ValueError:
                invalid_json = True
    clean = CleanRow(
        id=row_id,
        meeting_name=meeting,
        meeting_date=meeting_date,
        page_number=page_number,
        text=_as_text(values["text"]),
        page_image=_as_text(values["page_image"]),
        entities_json=_as_text(values["entities_json"]),
        votes_json=_as_text(values["votes_json"]),
    )
    return clean, None, removed, invalid_json


def clean_page(rows: list[Any]) -> PageRows:
    """Split one API page into rows to store and rows to quarantine, ids unique within it."""
    page = PageRows()
    seen: set[str] = set()
    for row in rows:
        clean, rejection, removed, invalid_json = clean_row(row)
        page.nul_removed += removed
        if clean is not None and clean.id in seen:
            clean, rejection = (
                None,
                Rejection(clean.id, "duplicate id within one page", raw_text(row)),
            )
        if clean is None:
            assert rejection is not None
            page.rejected.append(rejection)
            continue
        seen.add(clean.id)
        page.invalid_json += invalid_json
        page.clean.append(clean)
    return page
