"""Validate and clean one source row: pure functions, so every rule is unit-tested alone."""

from __future__ import annotations

import dataclasses
import datetime
import json
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

from civicband.digest import content_fp

DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
MAX_ID_LENGTH = 200
INVALID_ID = "missing or invalid id"
DUPLICATE_ID = "duplicate id within one page"
TEXT_COLUMNS = ("meeting", "text", "page_image", "entities_json", "votes_json")
PG_INTEGER = 2**31 - 1
# Half of a UTF-16 surrogate pair on its own: JSON can carry it, UTF-8 (and PostgreSQL) cannot.
LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_DATE_CACHE_SIZE = 4096  # distinct date strings remembered (a site has a few thousand)


class CleanRow(NamedTuple):
    """A row ready for COPY, in the staging table's column order."""

    id: str
    meeting_name: str
    meeting_date: datetime.date
    page_number: int | None
    text: str | None
    page_image: str | None
    entities_json: str | None
    votes_json: str | None
    content_fp: int

    def as_tuple(self) -> tuple[Any, ...]:
        """The COPY row."""
        return tuple(self)


@dataclass(frozen=True)
class Rejection:
    """A source row we could not store, with why and its raw content."""

    row_id: str | None  # an invalid id as shown (escaped, cut): it may look like a valid one
    reason: str
    raw: str
    content_fp: int = 0
    copies: int = 1  # identical rows the source holds (NULL-id twins): one rejection, counted

    @property
    def page_id(self) -> str | None:
        """The id of the page this row would have been, if its id is one a page can have."""
        return None if self.reason == INVALID_ID else self.row_id


@dataclass
class PageRows:
    """One page of rows after cleaning: what to store, what to quarantine, what was fixed."""

    clean: list[CleanRow] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    nul_removed: int = 0

    @property
    def rejected_rows(self) -> int:
        """Source rows rejected: identical twins are one Rejection, but every copy is a row."""
        return sum(rejection.copies for rejection in self.rejected)

    # PostgreSQL types of CleanRow's fields, in order (the staging table's columns): a binary
    # COPY sends `clean` as it is, and PostgreSQL reads it without parsing text.
    copy_types: ClassVar[tuple[str, ...]] = (
        "text",
        "text",
        "date",
        "int4",
        "text",
        "text",
        "text",
        "text",
        "int8",
    )


def raw_text(row: Any) -> str:
    """The row as the source sent it, kept losslessly for rejected_rows."""
    try:
        text = json.dumps(row, ensure_ascii=False, sort_keys=True, default=str)
    except (TypeError, ValueError):
        text = repr(row)
    # PostgreSQL text cannot hold NUL or a lone surrogate; their escaped forms keep them visible.
    return _escape_surrogates(text.replace("\x00", "\\u0000"))


def _escape_surrogates(text: str) -> str:
    return LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _shown_id(value: Any) -> str | None:
    """An id as rejected_rows can hold it: NUL and lone surrogates escaped, at most 200 chars."""
    if value is None:
        return None
    return _escape_surrogates(str(value).replace("\x00", "\\u0000"))[:MAX_ID_LENGTH]


def _has_lone_surrogate(row: dict) -> bool:
    """Whether any text of the row holds half a surrogate pair (only JSON's slow path makes one)."""
    return any(isinstance(v, str) and LONE_SURROGATE.search(v) for v in (*row, *row.values()))


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


def stored_text(value: Any) -> str | None:
    """A text column's value as the mirror stores it: NULs removed, JSON kept as text."""
    return _as_text(_strip_nul(value)[0])


def _parse_date(value: Any) -> datetime.date | None:
    if not isinstance(value, str) or not DATE.match(value):
        return None
    try:
        return datetime.date.fromisoformat(value)
    except ValueError:
        return None


_dates: dict[str, datetime.date | None] = {}


def _cached_date(value: str) -> datetime.date | None:
    """_parse_date of a str, remembered: a site's rows share a few thousand dates."""
    try:
        return _dates[value]
    except KeyError:
        pass
    if len(_dates) >= _DATE_CACHE_SIZE:
        _dates.clear()
    parsed = _dates[value] = _parse_date(value)
    return parsed


def _parse_id(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if not isinstance(value, str):
        return None
    if (
        "\x00" in value
        or not value.strip()
        or value != value.strip()
        or LONE_SURROGATE.search(value)
    ):
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


def _plain_text(value: Any) -> bool:
    """True when the value is stored as it is: None, or a str without NUL."""
    return value is None or (type(value) is str and "\x00" not in value)


def _clean_common(row: dict) -> CleanRow | None:
    """The usual row, checked in one pass; None sends it through clean_row's full rules.

    Returns a row only where those rules would return the same row with nothing removed.
    """
    get = row.get
    row_id, meeting, date, page = get("id"), get("meeting"), get("date"), get("page")
    if not (
        type(row_id) is str
        and row_id
        and len(row_id) <= MAX_ID_LENGTH
        and "\x00" not in row_id
        and row_id.strip() == row_id
        and type(meeting) is str
        and "\x00" not in meeting
        and meeting.strip()
        and type(date) is str
        and (page is None or (type(page) is int and -PG_INTEGER <= page <= PG_INTEGER))
    ):
        return None
    meeting_date = _cached_date(date)
    if meeting_date is None:
        return None
    text, page_image = get("text"), get("page_image")
    entities_json, votes_json = get("entities_json"), get("votes_json")
    if not (
        _plain_text(text)
        and _plain_text(page_image)
        and _plain_text(entities_json)
        and _plain_text(votes_json)
    ):
        return None
    return CleanRow(
        row_id,
        meeting,
        meeting_date,
        page,
        text,
        page_image,
        entities_json,
        votes_json,
        content_fp(row),
    )


def clean_row(
    row: Any, *, unicode_checked: bool = True
) -> tuple[CleanRow | None, Rejection | None, int]:
    """Check one row: (clean row, or its rejection), and how many NULs were removed.

    entities_json and votes_json are kept as the text the source sent, valid JSON or not.
    `unicode_checked` says the row's text is known to be valid Unicode (orjson read it).
    """
    if type(row) is dict and unicode_checked:
        clean = _clean_common(row)
        if clean is not None:
            return clean, None, 0
    if not isinstance(row, dict):
        return None, Rejection(None, "row is not an object", raw_text(row)), 0
    fingerprint = content_fp(row)
    if not unicode_checked and _has_lone_surrogate(row):
        reason = "text is not valid Unicode (half a surrogate pair)"
        if _parse_id(row.get("id")) is None:
            reason = INVALID_ID
        return None, Rejection(_shown_id(row.get("id")), reason, raw_text(row), fingerprint), 0
    removed = 0
    # NULs are removed from text only: an id or date holding one is invalid, not repaired.
    values: dict[str, Any] = {"id": row.get("id"), "date": row.get("date")}
    for column in TEXT_COLUMNS:
        values[column], count = _strip_nul(row.get(column))
        removed += count
    row_id = _parse_id(values["id"])
    if row_id is None:
        return (
            None,
            Rejection(_shown_id(values["id"]), INVALID_ID, raw_text(row), fingerprint),
            removed,
        )
    meeting = _as_text(values["meeting"])
    reason = None
    if meeting is None or not meeting.strip():
        reason = "missing meeting"
    elif values["date"] is None or values["date"] == "":
        reason = "missing date"
    meeting_date = _parse_date(values["date"])
    if reason is None and meeting_date is None:
        reason = "date is not a valid YYYY-MM-DD"
    page_ok, page_number = _parse_page(row.get("page"))
    if reason is None and not page_ok:
        reason = "page is not an integer"
    if reason is not None:
        return None, Rejection(row_id, reason, raw_text(row), fingerprint), removed
    assert meeting is not None and meeting_date is not None
    clean = CleanRow(
        id=row_id,
        meeting_name=meeting,
        meeting_date=meeting_date,
        page_number=page_number,
        text=_as_text(values["text"]),
        page_image=_as_text(values["page_image"]),
        entities_json=_as_text(values["entities_json"]),
        votes_json=_as_text(values["votes_json"]),
        content_fp=fingerprint,
    )
    return clean, None, removed


def clean_page(rows: list[Any], *, unicode_checked: bool = True) -> PageRows:
    """Split one API page into rows to store and rows to quarantine, ids unique within it."""
    page = PageRows()
    seen: set[str] = set()
    twins: dict[str, int] = {}  # a rejection's raw text -> its place in page.rejected
    for row in rows:
        clean, rejection, removed = clean_row(row, unicode_checked=unicode_checked)
        page.nul_removed += removed
        if clean is not None and clean.id in seen:
            clean, rejection = (
                None,
                Rejection(clean.id, DUPLICATE_ID, raw_text(row), clean.content_fp),
            )
        if clean is None:
            assert rejection is not None
            twin = twins.get(rejection.raw)
            if twin is None:
                twins[rejection.raw] = len(page.rejected)
                page.rejected.append(rejection)
            else:  # the same raw row again: one rejection that says how many copies there are
                again = page.rejected[twin]
                page.rejected[twin] = dataclasses.replace(again, copies=again.copies + 1)
            continue
        seen.add(clean.id)
        page.clean.append(clean)
    return page
