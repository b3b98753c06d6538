"""The source's dialects: URLs, the JSON of Datasette 0.65 and 1.0, and what its errors mean."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote_plus, urlencode, urlsplit

import orjson

SUBDOMAIN = re.compile(r"^[a-z0-9-]+(\.[a-z0-9-]+)*$")
DOCUMENT_TABLES = {"agenda": "agendas", "minutes": "minutes"}
MAX_PAGE_SIZE = 1000
DATABASE = "meetings"


class SourceError(Exception):
    """An answer from a site that is not a usable page; `retryable` says whether to try again."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


class Interrupted(SourceError):
    """The query hit the site's time limit."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=True)


class UnknownSite(SourceError):
    """The site redirects to civic.band's index: it does not exist."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


class LacksColumn(SourceError):
    """An older site without entities_json/votes_json refused a query naming them."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


@dataclass(frozen=True)
class TablePage:
    """One page of a table: its rows as objects and the token for the next page, if any."""

    rows: list[Any]
    next: str | None
    # Datasette cut the answer at max_returned_rows; None when the answer does not say.
    truncated: bool | None = None
    # orjson read the body, which refuses text that is not valid Unicode (lone surrogates).
    unicode_checked: bool = True


def check_site_url(template: str) -> str:
    """Refuse a CIVICBAND_SITE_URL that cannot place a subdomain safely."""
    if "{subdomain}" not in template:
        raise ValueError("CIVICBAND_SITE_URL must contain {subdomain}")
    parts = urlsplit(template.replace("{subdomain}", "example"))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"CIVICBAND_SITE_URL must be an http(s) URL template, got {template!r}")
    return template.rstrip("/")


def site_root(template: str, subdomain: str) -> str:
    """The root URL of one municipality's Datasette site."""
    if not SUBDOMAIN.match(subdomain):
        raise ValueError(f"invalid subdomain {subdomain!r}")
    return template.rstrip("/").replace("{subdomain}", subdomain)


def table_url(root: str, document_type: str, size: int, cursor: str | None) -> str:
    """A keyset page on the primary key: `_sort=id` reads the index, `_next` is sent verbatim."""
    params = {"_sort": "id", "_size": str(size), "_nocount": "1", "_nofacet": "1"}
    if cursor is not None:
        params["_next"] = cursor
    return f"{root}/{DATABASE}/{DOCUMENT_TABLES[document_type]}.json?{urlencode(params)}"


_SCALARS = frozenset((str, int, bool, type(None)))


def _has_float(data: Any) -> bool:
    """Whether any value in the parsed JSON is a float (rows of str/int/None are checked flat)."""
    stack = [data]
    while stack:
        value = stack.pop()
        kind = type(value)
        if kind is dict:
            values = value.values()
            if not _SCALARS.issuperset(map(type, values)):
                stack.extend(values)
        elif kind is list:
            if not _SCALARS.issuperset(map(type, value)):
                stack.extend(value)
        elif kind is float:
            return True
    return False


def _decode(body: bytes) -> tuple[Any, bool]:
    """The parsed body, and whether orjson read it (then its text is valid Unicode)."""
    # orjson reads a page in about half the time. It accepts a subset of what json accepts and
    # returns the same values, except that it turns integers beyond 64 bits into floats: so its
    # answer is used only when it holds no float at all, and anything else (floats, NaN, lone
    # surrogates, other encodings, errors) is read by json exactly as before.
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    else:
        if not _has_float(data):
            return data, True
    try:
        return json.loads(body), False
    except (UnicodeDecodeError, ValueError):
        start = body[:60].decode("utf-8", "replace").strip().replace("\n", " ")
        kind = "HTML" if start.lower().startswith(("<!doctype", "<html")) else "not JSON"
        title = _TITLE.search(body[:4000]) if kind == "HTML" else None
        titled = (
            f", titled {title.group(1).decode('utf-8', 'replace').strip()[:60]!r}" if title else ""
        )
        raise SourceError(f"answer is {kind}: {start[:40]!r}{titled}", retryable=True) from None


def parse_object(body: bytes) -> dict[str, Any]:
    """Any JSON object Datasette answers (a database page); anything else is an error."""
    data, _ = _decode(body)
    if not isinstance(data, dict):
        raise SourceError("answer is JSON but not an object", retryable=True)
    return data


# How much of a 400 answer is searched for its error: Datasette 0.65 puts the query's SQL (up to
# URLLENGTH_LIMIT characters, JSON-escaped) before the error message.
_ERROR_HEAD = 20_000


def is_interrupted(status: int, body: bytes) -> bool:
    """Datasette's time limit: 500 on 1.0, 400 "SQL Interrupted" on 0.65; both mean try again."""
    if status not in (400, 500):
        return False
    text = body[:_ERROR_HEAD].decode("utf-8", "replace")
    return "interrupted" in text.lower() or "took too long" in text.lower()


def parse_table_page(body: bytes) -> TablePage:
    """Read a table page of either JSON line; anything else is an error, never an empty page."""
    data, unicode_checked = _decode(body)
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise SourceError("answer is JSON without a rows list", retryable=True)
    if data.get("ok") is False:
        raise SourceError(f"site says: {data.get('error')!r}", retryable=False)
    rows = data["rows"]
    columns = data.get("columns")
    if rows and isinstance(rows[0], list):
        if not isinstance(columns, list):
            raise SourceError("rows are arrays but there are no columns", retryable=True)
        # A row whose length disagrees with the columns stays a list: it is rejected, not guessed.
        rows = [
            dict(zip(columns, row, strict=True))
            if isinstance(row, list) and len(row) == len(columns)
            else row
            for row in rows
        ]
    next_token = data.get("next")
    if next_token is not None and not isinstance(next_token, str):
        next_token = str(next_token)
    if next_token == "":
        next_token = None
    truncated = data.get("truncated")
    return TablePage(
        rows=rows,
        next=next_token,
        truncated=truncated if isinstance(truncated, bool) else None,
        unicode_checked=unicode_checked,
    )


# The SQL endpoint differs: /meetings/-/query.json on 1.0 (civic.band), /meetings.json on 0.65.
SQL_PATHS = {"1.0": "/-/query.json", "0.65": ".json"}


def count_sql(document_type: str) -> str:
    """An exact count by SQL: index-only, unlike 1.0's `_extra=count`, which stops at 10,001."""
    return f"select count(*) as n from {DOCUMENT_TABLES[document_type]}"


def parse_count(page: TablePage) -> int | None:
    """The count of a count answer; None when Datasette gave up on it."""
    if not page.rows or not isinstance(page.rows[0], dict):
        raise SourceError("count answer has no row", retryable=True)
    value = page.rows[0].get("n")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise SourceError(f"count answer is not a number: {value!r}", retryable=True)
    return value


def dialect_of_body(body: bytes) -> str:
    """The Datasette line of a table page: 1.0's JSON opens with `ok`, 0.65's with `database`."""
    return "1.0" if body.lstrip()[:8].startswith(b'{"ok"') else "0.65"


# Characters RFC 3986 allows unescaped in a query, kept so: the digest's SQL is mostly these,
# and escaping them would bring its URL near URLLENGTH_LIMIT.
_SQL_SAFE = "(),*!:@/"


def sql_url(root: str, dialect: str, sql: str, **params: str) -> str:
    """A read-only SQL query on the meetings database, parameters bound by Datasette."""
    query = urlencode({"sql": sql, **params}, quote_via=quote_plus, safe=_SQL_SAFE)
    return f"{root}/{DATABASE}{SQL_PATHS[dialect]}?{query}"


def parse_sql(body: bytes) -> TablePage:
    """An SQL answer of either line: rows as objects, and whether Datasette cut it short.

    An answer that does not say whether it is complete is an error: completeness is never
    inferred from how many rows came back.
    """
    page = parse_table_page(body)
    if page.truncated is None:
        raise SourceError("SQL answer does not say whether it is complete", retryable=True)
    if not all(isinstance(row, dict) for row in page.rows):
        raise SourceError("SQL answer has rows that are not objects", retryable=True)
    return page


_TITLE = re.compile(rb"<title[^>]*>([^<]*)</title>", re.IGNORECASE)
_SIZE_LIMIT = re.compile(rb"_size must be <= (\d+)")


def page_size_of(url: str) -> int:
    """The `_size` a table page's URL asked for (0 when it names none)."""
    asked = parse_qs(urlsplit(url).query).get("_size", ["0"])[0]
    return int(asked) if asked.isdecimal() else 0


def page_size_limit(status: int, body: bytes) -> int | None:
    """The largest `_size` a site accepts, when it refused ours (its max_returned_rows)."""
    match = _SIZE_LIMIT.search(body[:2000]) if status == 400 else None
    return int(match.group(1)) if match else None


def lacks_query_endpoint(status: int, body: bytes) -> bool:
    """Datasette 0.65 has no /-/query: it reads `-` as a table name and answers 400."""
    return status == 400 and b"no such table: -" in body[:_ERROR_HEAD]


def lacks_column(status: int, body: bytes) -> bool:
    """An older site without entities_json/votes_json refused a query naming them."""
    return status == 400 and b"no such column" in body[:_ERROR_HEAD]
