"""Tests of the civic.band look-alike itself, against real Datasette 0.65.5 and 1.0a28."""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import threading
import time
import unicodedata
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest

from tests.lookalike import data
from tests.lookalike.fixtures import Source

UA = "civicband-tests/1.0 (+https://example.invalid/civicband)"
SCRAPY_UA = "Scrapy/2.13.0 (+https://scrapy.org)"
BROWSER_UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120 Safari/537.36"
SLOW = "with recursive c(x) as (select 1 union all select x+1 from c where x<100000000)"


class NoRedirect(urllib.request.HTTPRedirectHandler):
    """Hand 3xx answers back instead of following them."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        """Do not follow."""
        return None


OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), NoRedirect)


def fetch(
    url: str, headers: dict[str, str] | None = None, timeout: float = 10
) -> tuple[int, dict[str, str], bytes]:
    """GET a URL; return (status, lowercased headers, body), errors included."""
    req = urllib.request.Request(url, headers={"User-Agent": UA, **(headers or {})})
    try:
        with OPENER.open(req, timeout=timeout) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


def get_json(url: str, **kw: Any) -> tuple[int, Any]:
    """GET a URL and decode its JSON body."""
    status, headers, body = fetch(url, **kw)
    assert headers["content-type"].startswith("application/json"), (status, headers, body[:200])
    return status, json.loads(body)


def rows_of(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Return a table/query page's rows as dicts (0.65 sends arrays plus `columns`)."""
    rows = doc["rows"]
    if rows and isinstance(rows[0], list):
        return [dict(zip(doc["columns"], r, strict=True)) for r in rows]
    return rows


def page_all(site_url: str, table: str, size: int) -> tuple[list[dict[str, Any]], int]:
    """Page through a table with _sort=id following `next`; return (rows, requests)."""
    rows: list[dict[str, Any]] = []
    token, n = None, 0
    while True:
        url = f"{site_url}/meetings/{table}.json?_sort=id&_size={size}"
        if token is not None:
            url += "&_next=" + quote(token, safe="")
        status, doc = get_json(url)
        n += 1
        assert status == 200, doc
        rows += rows_of(doc)
        token = doc["next"]
        if token is None:
            return rows, n


def count_url(source: Source, site_url: str, sql: str) -> str:
    """Return the URL that runs SQL on this Datasette line."""
    path = "/meetings/-/query.json" if source.version.startswith("1.") else "/meetings.json"
    return f"{site_url}{path}?sql={quote(sql)}"


def is_v1(source: Source) -> bool:
    """Whether the source runs Datasette 1.0."""
    return source.version.startswith("1.")


def wait_for_log(
    source: Source, ready: Callable[[list[dict[str, Any]]], bool], timeout: float = 5
) -> list[dict[str, Any]]:
    """Poll the server's request log until `ready(log)`; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        log = source.requests()
        if ready(log):
            return log
        if time.monotonic() > deadline:
            pytest.fail(f"request log never got ready: {log}")
        time.sleep(0.01)


# ---- paging, counting, shapes -----------------------------------------------------------------


def test_paging_by_id_returns_every_row_once(source: Source) -> None:
    """_sort=id paging following `next` yields each row exactly once, digit ids included."""
    digits = data.make_digit_id_rows("agendas", 2) + data.make_digit_id_rows(
        "agendas", 1, seed=1, leading_zero=True
    )
    site = source.create_site(data.make_rows("agendas", 230, seed=7) + digits, 15)
    rows, requests = page_all(site.url, "agendas", 50)
    assert requests == 5
    assert sorted(r["id"] for r in rows) == sorted(site.ids("agendas"))
    assert len(rows) == 233
    assert rows == sorted(site.rows("agendas"), key=lambda r: r["id"])
    minutes, _ = page_all(site.url, "minutes", 1000)
    assert len(minutes) == 15


def test_table_page_shape(source: Source) -> None:
    """Table JSON differs by line: objects+ok on 1.0, arrays+columns+count on 0.65."""
    site = source.create_site(7, 0)
    status, doc = get_json(f"{site.url}/meetings/agendas.json?_sort=id&_size=3")
    assert status == 200
    assert doc["truncated"] is False
    assert isinstance(doc["next"], str) and doc["next"].count(",") == 1
    if is_v1(source):
        assert list(doc) == ["ok", "next", "rows", "truncated"]
        assert set(doc["rows"][0]) == set(data.COLUMNS)
    else:
        assert "ok" not in doc
        assert doc["columns"] == list(data.COLUMNS)
        assert doc["filtered_table_rows_count"] == 7
        assert doc["next_url"].startswith(f"{site.url}/meetings/agendas.json?")
    last = doc["next"]
    status, doc = get_json(f"{site.url}/meetings/agendas.json?_sort=id&_size=5&_next={last}")
    assert len(doc["rows"]) == 4 and doc["next"] is None


def test_default_sort_is_date_descending(source: Source) -> None:
    """Without _sort, tables come sorted by date descending, `next` is "<date>,<id>"."""
    site = source.create_site(45, 0)
    _, doc = get_json(f"{site.url}/meetings/agendas.json?_size=40")
    rows = rows_of(doc)
    assert len(rows) == 40
    dates = [r["date"] for r in rows]
    assert dates == sorted(dates, reverse=True)
    assert doc["next"] == f"{rows[-1]['date']},{rows[-1]['id']}"


def test_default_sort_paging_breaks_on_ties(source: Source) -> None:
    """Default-sort paging repeats and skips rows when a page ends inside one date."""
    # The first page is `order by date desc`, later ones `order by date desc, id` keyed on
    # `id > :last`: ties come back in rowid order on page one and id order after it.
    same_day = [
        {"id": f"{c * 12}", "meeting": "M", "date": "2024-01-02", "page": 1, "text": c}
        for c in "fedcba"  # inserted in descending id order: ties come back in rowid order
    ]
    site = source.create_site(same_day, 0)
    seen: list[str] = []
    url = f"{site.url}/meetings/agendas.json?_size=3"
    _, doc = get_json(url)
    seen += [r["id"] for r in rows_of(doc)]
    _, doc = get_json(f"{url}&_next={quote(doc['next'])}")
    seen += [r["id"] for r in rows_of(doc)]
    assert seen == ["ffffffffffff", "eeeeeeeeeeee", "dddddddddddd", "eeeeeeeeeeee", "ffffffffffff"]
    assert doc["next"] is None  # aaaa…, bbbb… and cccc… are never served
    rows, _ = page_all(site.url, "agendas", 3)
    assert sorted(r["id"] for r in rows) == sorted(site.ids("agendas"))


def test_legacy_site_lacks_json_columns(source: Source) -> None:
    """legacy=True sites have no entities_json/votes_json."""
    site = source.create_site(3, 3, legacy=True)
    _, doc = get_json(f"{site.url}/meetings/minutes.json?_sort=id")
    assert set(rows_of(doc)[0]) == set(data.LEGACY_COLUMNS)


def test_shape_objects(source: Source) -> None:
    """?_shape=objects gives rows as objects on both lines."""
    site = source.create_site(3, 0)
    _, doc = get_json(f"{site.url}/meetings/agendas.json?_sort=id&_shape=objects")
    assert isinstance(doc["rows"][0], dict)
    assert doc["next"] is None


def test_sql_count(source: Source) -> None:
    """Counting with SQL works at each line's endpoint; the other endpoint does not."""
    site = source.create_site(12, 5)
    status, doc = get_json(count_url(source, site.url, "select count(*) as n from agendas"))
    assert status == 200
    assert rows_of(doc) == [{"n": 12}]
    if is_v1(source):
        assert doc == {"ok": True, "rows": [{"n": 12}], "truncated": False}
        old = f"{site.url}/meetings.json?sql=select+count(*)+from+agendas"
        status, headers, _ = fetch(old)
        assert status == 302
        assert (
            headers["location"] == f"/{site.subdomain}/meetings/-/query.json?" + old.split("?")[1]
        )
    else:
        assert doc["ok"] is True and doc["columns"] == ["n"] and doc["rows"] == [[12]]
        status, doc = get_json(f"{site.url}/meetings/-/query.json?sql=select+1")
        assert status == 400 and doc["error"] == "no such table: -"


def test_bucket_counts(source: Source) -> None:
    """Grouping by substr(id,1,2) adds up to the table count."""
    site = source.create_site(300, 0)
    sql = "select substr(id,1,2) as b, count(*) as n from agendas group by b order by b"
    _, doc = get_json(count_url(source, site.url, sql))
    assert sum(r["n"] for r in rows_of(doc)) == 300


def test_size_above_max_is_400(source: Source) -> None:
    """_size must be <= max_returned_rows (1000)."""
    site = source.create_site(1, 0)
    status, doc = get_json(f"{site.url}/meetings/agendas.json?_size=1001")
    assert status == 400
    assert doc == {"ok": False, "error": "_size must be <= 1000", "status": 400, "title": None}
    status, _ = get_json(f"{site.url}/meetings/agendas.json?_size=1000")
    assert status == 200


def test_site_max_returned_rows(source: Source) -> None:
    """A site's own max_returned_rows bounds _size (400 above it) and truncates SQL answers."""
    site = source.create_site(150, 0, settings={"max_returned_rows": 50})
    other = source.create_site(150, 0)
    table = f"{site.url}/meetings/agendas.json?_sort=id"
    status, doc = get_json(table + "&_size=51")
    assert status == 400
    assert doc == {"ok": False, "error": "_size must be <= 50", "status": 400, "title": None}
    status, doc = get_json(table + "&_size=50")
    assert status == 200 and len(doc["rows"]) == 50 and doc["next"] is not None
    assert doc["truncated"] is False
    _, doc = get_json(count_url(source, site.url, "select id from agendas"))
    assert len(doc["rows"]) == 50 and doc["truncated"] is True
    _, doc = get_json(count_url(source, site.url, "select id from agendas limit 50"))
    assert len(doc["rows"]) == 50 and doc["truncated"] is False
    _, doc = get_json(count_url(source, other.url, "select id from agendas"))
    assert len(doc["rows"]) == 150 and doc["truncated"] is False
    assert site.settings() == {"max_returned_rows": 50}

    # Equal to default_page_size (100), Datasette fetches one more row: 101 rows, truncated.
    site.configure(max_returned_rows=100)
    assert get_json(table + "&_size=101")[1]["error"] == "_size must be <= 100"
    _, doc = get_json(count_url(source, site.url, "select id from agendas"))
    assert len(doc["rows"]) == 101 and doc["truncated"] is True

    site.configure(max_returned_rows=None)
    assert site.settings() == {}
    assert get_json(table + "&_size=1000")[0] == 200
    with pytest.raises(TypeError):
        site.configure(max_rows=5)


def test_default_page_size_above_max_returned_rows_drops_rows(source: Source) -> None:
    """Without _size, a page bigger than max_returned_rows is cut short with next = null."""
    site = source.create_site(150, 0, settings={"max_returned_rows": 50})
    _, doc = get_json(f"{site.url}/meetings/agendas.json?_sort=id")
    assert len(doc["rows"]) == 50 and doc["next"] is None
    assert doc["truncated"] is (not is_v1(source))  # 1.0 does not even say so
    site.configure(default_page_size=50)
    _, doc = get_json(f"{site.url}/meetings/agendas.json?_sort=id")
    assert len(doc["rows"]) == 50 and doc["next"] is not None and doc["truncated"] is False


def test_site_sql_time_limit(source: Source) -> None:
    """A site's own sql_time_limit_ms interrupts what the default 1000 ms lets finish."""
    medium = "with recursive c(x) as (select 1 union all select x+1 from c where x<500000)"
    sql = f"{medium} select count(*) as n from c"
    tight = source.create_site(1, 0, settings={"sql_time_limit_ms": 10})
    loose = source.create_site(1, 0)
    status, doc = get_json(count_url(source, tight.url, sql))
    assert status == 400 and doc["title"] == "SQL Interrupted"
    status, doc = get_json(count_url(source, loose.url, sql))
    assert status == 200 and rows_of(doc) == [{"n": 500000}]
    tight.configure(sql_time_limit_ms=None)
    status, doc = get_json(count_url(source, tight.url, sql))
    assert status == 200 and rows_of(doc) == [{"n": 500000}]


@pytest.mark.datasette("ds10")
def test_extra_count_stops_at_10001(source: Source) -> None:
    """On 1.0, ?_extra=count caps at 10001; SQL count is exact."""
    assert source.version == "1.0a28"
    site = source.create_site(data.make_rows("agendas", 10050, text_size=5), 0)
    _, doc = get_json(f"{site.url}/meetings/agendas.json?_size=1&_extra=count")
    assert doc["count"] == 10001
    _, doc = get_json(count_url(source, site.url, "select count(*) as n from agendas"))
    assert doc["rows"] == [{"n": 10050}]


def test_real_interruption_matches_fault(source: Source) -> None:
    """The `interrupted` fault answers like a real time-limited query, table and SQL alike."""
    site = source.create_site(3, 0)
    where = quote(f"id in ({SLOW} select x from c)")
    table_url = f"{site.url}/meetings/agendas.json?_size=2&_timelimit=20&_where={where}"
    sql_url = count_url(source, site.url, f"{SLOW} select count(*) from c") + "&_timelimit=20"
    for url in (table_url, sql_url):
        real = get_json(url)
        source.faults.add(match=r"agendas\.json|sql=", action="interrupted")
        fake = get_json(url)
        assert real[0] == fake[0]
        assert real[1]["title"] == fake[1]["title"]
        assert real[1]["error"][:60] == fake[1]["error"][:60]
    expected = 500 if is_v1(source) else 400
    assert get_json(table_url)[0] == expected


def test_id_gt_with_digit_ids_skips_rows(source: Source) -> None:
    """Datasette turns an all-digit id into a number for id__gt, so keyset by id__gt skips rows."""
    zero = data.make_digit_id_rows("agendas", 1, leading_zero=True)
    site = source.create_site(data.make_rows("agendas", 200, seed=3) + zero, 0)
    pivot = zero[0]["id"]
    truth = sorted(i for i in site.ids("agendas") if i > pivot)
    _, doc = get_json(f"{site.url}/meetings/agendas.json?_sort=id&_size=1000&id__gt={pivot}")
    got = [r["id"] for r in rows_of(doc)]
    assert len(got) < len(truth)


def test_null_ids_past_the_first_page_are_skipped(source: Source) -> None:
    """Keyset paging by id loses NULL-id rows after the first page (token "$null,None")."""
    nulls = [{"id": None, "meeting": "M", "date": "2024-01-02", "page": i} for i in range(3)]
    site = source.create_site(nulls + data.make_rows("agendas", 5, seed=9), 0)
    _, doc = get_json(f"{site.url}/meetings/agendas.json?_sort=id&_size=2")
    assert doc["next"] == "$null,None"
    rows, _ = page_all(site.url, "agendas", 2)
    assert [r["id"] for r in rows].count(None) == 2 and len(rows) == 7


def test_hostile_rows_are_served(source: Source) -> None:
    """NULL ids, NUL characters, bad dates and bad JSON reach the client as stored."""
    rows = [
        {"id": None, "meeting": "City Council", "date": "2024-01-02", "page": 1, "text": "x"},
        {"id": "aaaaaaaaaaaa", "meeting": "", "date": "2024-13-45", "page": 2, "text": "a\x00b"},
        {"id": "bbbbbbbbbbbb", "meeting": "M", "date": "2024-01-02", "entities_json": "{bad"},
    ]
    site = source.create_site(rows, 0)
    _, doc = get_json(f"{site.url}/meetings/agendas.json?_sort=id")
    got = {r["id"]: r for r in rows_of(doc)}
    assert set(got) == {None, "aaaaaaaaaaaa", "bbbbbbbbbbbb"}
    assert got["aaaaaaaaaaaa"]["text"] == "a\x00b"
    assert got["bbbbbbbbbbbb"]["entities_json"] == "{bad"


# ---- hostile text -----------------------------------------------------------------------------

# Golden sha256 of json.dumps(make_rows(...)) for the default (hostile=False) generator.
DEFAULT_ROWS_SHA256 = {
    ("agendas", 300, 7): "bd8e68f4555828bbaff3d4bbf7a024c1d652a71f0d11684fe357e5d26d77b65f",
    ("minutes", 50, "x"): "2f7e932bbd91e9e18ebf5ee605fbc48b9a5ea5b37cedb4b8332efeeb1ba2560e",
}


def _json_texts(row: dict[str, Any]) -> tuple[str, str]:
    """Return a row's (entities_json, votes_json), '' for NULL."""
    return row.get("entities_json") or "", row.get("votes_json") or ""


def _both_json(row: dict[str, Any], test: Callable[[str], bool]) -> bool:
    """Whether `test` holds for both JSON columns of a row."""
    return all(test(t) for t in _json_texts(row))


def _has_script(text: str, low: str, high: str) -> bool:
    """Whether text holds a character in [low, high]."""
    return any(low <= c <= high for c in text)


# How to recognise each hostile category in a row, independently of how data.py makes it.
HOSTILE_CHECKS: dict[str, Callable[[dict[str, Any]], bool]] = {
    "astral_emoji": lambda r: any(ord(c) > 0xFFFF for c in r["text"]) and "\u200d" in r["text"],
    "rtl": lambda r: (
        _has_script(r["text"], "\u0600", "\u06ff") and _has_script(r["text"], "\u0590", "\u05ff")
    ),
    "combining": lambda r: any(unicodedata.combining(c) for c in r["text"]),
    "tab": lambda r: "\t" in r["text"],
    "crlf": lambda r: "\r\n" in r["text"],
    "lone_cr": lambda r: re.search("\r(?!\n)", r["text"]) is not None,
    "backslash": lambda r: "\\" in r["text"],
    "single_quote": lambda r: "'" in r["text"],
    "double_quote": lambda r: '"' in r["text"],
    "nul_text": lambda r: "\x00" in r["text"],
    "long_text": lambda r: len(r["text"]) >= 200_000,
    "nul_meeting": lambda r: "\x00" in r["meeting"],
    "unicode_meeting": lambda r: not r["meeting"].isascii(),
    "nul_page_image": lambda r: "\x00" in r["page_image"],
    "json_escapes": lambda r: _both_json(r, lambda t: "\\u00e9" in t and "\\ud83c\\udfdb" in t),
    "json_non_ascii": lambda r: _both_json(r, lambda t: not t.isascii()),
    "nul_json": lambda r: _both_json(r, lambda t: "\x00" in t),
}


def hostile_found(rows: list[dict[str, Any]]) -> set[str]:
    """Return the hostile categories present somewhere in rows."""
    return {name for name, check in HOSTILE_CHECKS.items() if any(check(r) for r in rows)}


def test_default_rows_unchanged() -> None:
    """hostile=False output stays byte-identical (other tests and benchmarks depend on it)."""
    for (kind, n, seed), digest in DEFAULT_ROWS_SHA256.items():
        rows = data.make_rows(kind, n, seed=seed)
        assert hashlib.sha256(json.dumps(rows).encode()).hexdigest() == digest
        assert data.make_rows(kind, n, seed=seed, hostile=False) == rows


def test_hostile_rows_cover_every_category() -> None:
    """hostile=True spreads every category over the rows; id and date stay clean and hashed."""
    assert set(HOSTILE_CHECKS) == set(data.HOSTILE_CATEGORIES)
    for kind in data.TABLES:
        rows = data.make_rows(kind, len(data.HOSTILE_CATEGORIES), seed="cover", hostile=True)
        assert hostile_found(rows) == set(data.HOSTILE_CATEGORIES), kind
        assert sum(len(r["text"]) >= 200_000 for r in rows) == data.LONG_ROWS
        assert len({r["id"] for r in rows}) == len(rows)
        for r in rows:
            assert re.fullmatch("[0-9a-f]{12}", r["id"]), r["id"]
            assert re.fullmatch(r"\d{4}-\d\d-\d\d", r["date"]), r["date"]
            assert r["id"] == data.row_id(kind, r["meeting"], r["date"], r["page"], r["text"])
            for text in filter(None, _json_texts(r)):
                json.loads(text, strict=False)  # valid JSON, if raw NULs are allowed
        escaped = next(r for r in rows if HOSTILE_CHECKS["json_escapes"](r))
        assert data.ESCAPED_NAME in json.loads(escaped["entities_json"])["persons"]
    plain = data.make_rows("agendas", 40, seed="cover")
    assert hostile_found(plain) == set()
    again = data.make_rows("agendas", 40, seed="cover", hostile=True)
    assert again == data.make_rows("agendas", 40, seed="cover", hostile=True)
    assert again != data.make_rows("agendas", 40, seed="other", hostile=True)


def test_hostile_site_round_trips_exactly(source: Source) -> None:
    """Every hostile value comes back exactly through table pages and SQL on both lines."""
    n = len(data.HOSTILE_CATEGORIES) + 4  # 21 rows: 5 pages of _size=5, the last one short
    site = source.create_site(n, n, hostile=True)
    for table in data.TABLES:
        stored = site.rows(table)
        assert stored == data.make_rows(table, n, seed=site.subdomain, hostile=True)
        assert hostile_found(stored) == set(data.HOSTILE_CATEGORIES)
        by_id = sorted(stored, key=lambda r: r["id"])
        served, requests = page_all(site.url, table, 5)
        assert requests == 5
        assert served == by_id
        sql = f"select * from {table} order by id"
        _, doc = get_json(count_url(source, site.url, sql))
        assert doc["truncated"] is False and rows_of(doc) == by_id
    _, _, body = fetch(f"{site.url}/meetings/agendas.json?_sort=id&_size=1000")
    assert b"\\u0000" in body and b"\x00" not in body


# ---- the web around the sites -----------------------------------------------------------------


def raw_get(source: Source, path: str, headers: dict[str, str]) -> tuple[int, str, bytes]:
    """GET with exactly these headers (http.client adds no User-Agent)."""
    conn = http.client.HTTPConnection(urlsplit(source.base_url).netloc, timeout=10)
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.getheader("content-type", ""), resp.read()
    finally:
        conn.close()


def test_bot_wall(source: Source) -> None:
    """Scrapy's default, browser-like and missing user agents get a 200 HTML page."""
    site = source.create_site(2, 0)
    path = f"/{site.subdomain}/meetings/agendas.json"
    for headers in ({"User-Agent": SCRAPY_UA}, {"User-Agent": BROWSER_UA}, {}, {"User-Agent": ""}):
        status, ctype, body = raw_get(source, path, headers)
        assert status == 200 and ctype.startswith("text/html"), headers
        assert b"<html" in body and b"Access denied" in body
    status, ctype, _ = raw_get(source, path, {"User-Agent": UA})
    assert status == 200 and ctype.startswith("application/json")
    assert [r["fault"] for r in source.requests()] == ["botwall"] * 4 + [None]


def test_unknown_subdomain_redirects_to_index(source: Source) -> None:
    """A site that does not exist (or a bad name) redirects 302 to the index."""
    for sub in ("nosuch.ca", "Bad_Name", "..%2fetc"):
        status, headers, _ = fetch(f"{source.base_url}/{sub}/meetings/agendas.json")
        assert status == 302 and headers["location"] == source.index_url


def test_index_page(source: Source) -> None:
    """The index lists every site with name, state, kind, pages and last updated."""
    meta = {"name": "Alameda", "state": "CA", "kind": "city", "last_updated": "2025-01-05"}
    site = source.create_site(1234, 3, meta=meta)
    status, headers, body = fetch(source.index_url)
    assert status == 200 and headers["content-type"].startswith("text/html")
    text = body.decode()
    assert f'data-umami-event-subdomain="{site.subdomain}"' in text
    assert f'href="https://{site.subdomain}.civic.band"' in text
    row = text.split(f'data-umami-event-subdomain="{site.subdomain}"')[1].split("</tr>")[0]
    assert "Alameda" in row and "CA" in row and "city" in row
    assert "1,237" in row and "Jan 5, 2025" in row


def test_rows_change_under_running_server(source: Source) -> None:
    """Rows added, deleted or rebuilt are visible at once."""
    site = source.create_site(5, 0)
    count = count_url(source, site.url, "select count(*) as n from agendas")
    assert rows_of(get_json(count)[1]) == [{"n": 5}]
    site.add_rows("agendas", site.new_rows("agendas", 3, seed="new"))
    assert rows_of(get_json(count)[1]) == [{"n": 8}]
    gone = sorted(site.ids("agendas"))[:2]
    assert site.delete_rows("agendas", gone) == 2
    rows, _ = page_all(site.url, "agendas", 100)
    assert len(rows) == 6 and not set(gone) & {r["id"] for r in rows}
    site.rebuild(2, 1, legacy=True)
    rows, _ = page_all(site.url, "agendas", 100)
    assert {r["id"] for r in rows} == site.ids("agendas") and len(rows) == 2
    assert "entities_json" not in rows[0]


def test_new_site_concurrent_first_requests(source: Source) -> None:
    """Many first requests to a fresh site at once all succeed (the app is warmed once)."""
    site = source.create_site(20, 0)
    results: list[int] = []

    def hit() -> None:
        results.append(fetch(f"{site.url}/meetings/agendas.json?_sort=id")[0])

    threads = [threading.Thread(target=hit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 8


# ---- faults -----------------------------------------------------------------------------------


def test_fault_status_and_times(source: Source) -> None:
    """`status` answers with the given code `times` times, then the site answers again."""
    site = source.create_site(2, 0)
    url = f"{site.url}/meetings/agendas.json"
    source.faults.add(match=r"agendas\.json", action="status", status=503, times=2)
    source.faults.add(match="minutes", action="status", status=400, body={"error": "nope"})
    assert get_json(url)[0] == 503
    assert get_json(url) == (503, {"ok": False, "error": "injected", "status": 503})
    assert get_json(url)[0] == 200
    assert get_json(f"{site.url}/meetings/minutes.json") == (400, {"error": "nope"})
    source.faults.add(match="agendas", action="status", status=500, times=-1)
    assert [get_json(url)[0] for _ in range(3)] == [500] * 3
    source.faults.clear()
    assert get_json(url)[0] == 200


def test_fault_html(source: Source) -> None:
    """`html` answers 200 with the bot-wall page."""
    site = source.create_site(2, 0)
    source.faults.add(match="agendas", action="html")
    status, headers, body = fetch(f"{site.url}/meetings/agendas.json")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b"Access denied" in body


def test_fault_truncate(source: Source) -> None:
    """`truncate` sends half of the real body as a 200 application/json."""
    site = source.create_site(20, 0)
    url = f"{site.url}/meetings/agendas.json?_sort=id"
    full = fetch(url)[2]
    source.faults.add(match="agendas", action="truncate")
    status, headers, body = fetch(url)
    assert status == 200 and headers["content-type"].startswith("application/json")
    assert full.startswith(body)  # 0.65's query_ms varies, so lengths differ by a few bytes
    assert abs(2 * len(body) - len(full)) <= 8
    with pytest.raises(ValueError):
        json.loads(body)


def test_fault_rewrite_next(source: Source) -> None:
    """`rewrite_next` sets next to the request's own token, a given one or null, `times` times."""
    site = source.create_site(30, 0)
    base = f"{site.url}/meetings/agendas.json?_sort=id&_size=10"
    _, first = get_json(base)
    token = first["next"]
    second_url = base + "&_next=" + quote(token, safe="")
    _, second = get_json(second_url)
    assert second["next"] not in (None, token)

    source.faults.add(match="_next=", action="rewrite_next", mode="repeat")
    status, headers, body = fetch(second_url)
    doc = json.loads(body)
    assert status == 200 and int(headers["content-length"]) == len(body)
    assert doc["next"] == token and doc["rows"] == second["rows"]
    if not is_v1(source):  # next_url follows next: it asks for this same page again
        assert doc["next_url"].startswith(f"{site.url}/meetings/agendas.json?")
        assert parse_qs(urlsplit(doc["next_url"]).query)["_next"] == [token]
    assert get_json(second_url)[1]["next"] == second["next"]  # used up

    source.faults.add(match="_next=", action="rewrite_next", mode="advance")
    assert get_json(second_url)[1]["next"] == token + "0"  # a token never sent before

    source.faults.add(match="agendas", action="rewrite_next", mode="repeat")
    assert get_json(base)[1]["next"] == token  # a first page has no token to repeat

    source.faults.add(match="agendas", action="rewrite_next", value="zzz,zzz", times=2)
    assert [get_json(base)[1]["next"] for _ in range(3)] == ["zzz,zzz", "zzz,zzz", token]

    source.faults.add(match="agendas", action="rewrite_next", value=None)
    _, doc = get_json(base)
    assert doc["next"] is None and doc["rows"] == first["rows"]
    assert is_v1(source) or doc["next_url"] is None

    last_url = base + "&_next=" + quote(second["next"], safe="")
    assert get_json(last_url)[1]["next"] is None
    source.faults.add(match="agendas", action="rewrite_next", value="ab c,d")
    _, doc = get_json(last_url)
    assert doc["next"] == "ab c,d"
    if not is_v1(source):
        assert doc["next_url"].startswith(f"{site.url}/meetings/agendas.json?")
        assert doc["next_url"].endswith("&_next=ab+c%2Cd")
    faults = [r["fault"] for r in source.requests()]
    assert faults.count("rewrite_next") == 7 and source.faults.list()[-1]["times"] == 0
    with pytest.raises(ValueError, match="mode"):
        source.faults.add(match="agendas", action="rewrite_next")
    with pytest.raises(ValueError, match="unknown fault action"):
        source.faults.add(match="agendas", action="rewrite-next", mode="repeat")


def test_fault_rewrite(source: Source) -> None:
    """`rewrite` replaces body bytes (all or `count`), keeping status; e.g. a lone surrogate."""
    rows = [
        {"id": "aaaaaaaaaaaa", "meeting": "M", "date": "2024-01-02", "text": "before QQ after"},
        {"id": "bbbbbbbbbbbb", "meeting": "M", "date": "2024-01-03", "text": "QQ again"},
    ]
    site = source.create_site(rows, 0)
    url = f"{site.url}/meetings/agendas.json?_sort=id&_shape=objects"

    def texts(rewritten: bool = True) -> tuple[int, list[str], bytes]:
        status, headers, body = fetch(url)
        if rewritten:  # Datasette itself sends chunked bodies without a Content-Length
            assert int(headers["content-length"]) == len(body)
        return status, [r["text"] for r in json.loads(body)["rows"]], body

    source.faults.add(match="agendas", action="rewrite", old="QQ", new="\\ud800")
    status, got, body = texts()
    assert status == 200 and body.count(b"\\ud800") == 2
    assert got == ["before \ud800 after", "\ud800 again"]  # json.loads accepts lone surrogates
    assert source.requests()[-1]["bytes"] == len(body)
    source.faults.add(match="agendas", action="rewrite", old="QQ", new="\u00e9\U0001f3db", count=1)
    assert texts()[1] == ["before \u00e9\U0001f3db after", "QQ again"]  # new is sent as UTF-8
    assert texts(rewritten=False)[1] == ["before QQ after", "QQ again"]  # used up
    source.faults.add(match="nosuch", action="rewrite", old="Table", new="Tabla", times=-1)
    status, doc = get_json(f"{site.url}/meetings/nosuch.json")
    assert status == 404 and doc["error"] == "Tabla not found"
    source.faults.add(match="minutes", action="rewrite", old="Access denied", new="Welcome")
    path = f"/{site.subdomain}/meetings/minutes.json"
    status, ctype, body = raw_get(source, path, {"User-Agent": SCRAPY_UA})
    assert status == 200 and ctype.startswith("text/html")  # rewrites what the bot wall says
    assert b"Welcome" in body and b"Access denied" not in body
    with pytest.raises(ValueError, match="old"):
        source.faults.add(match="agendas", action="rewrite", old="", new="x")
    with pytest.raises(ValueError, match="UTF-8"):
        source.faults.add(match="agendas", action="rewrite", old="QQ", new="\ud800")


def test_fault_hang(source: Source) -> None:
    """`hang` delays (or never answers) without blocking other requests."""
    site = source.create_site(2, 0)
    source.faults.add(match="agendas", action="hang", seconds=0.4)
    start = time.monotonic()
    assert fetch(f"{site.url}/meetings/agendas.json")[0] == 200
    assert time.monotonic() - start >= 0.4
    (delayed,) = source.requests()
    assert delayed["done"] - delayed["time"] >= 0.4
    source.faults.add(match="agendas", action="hang")
    outcome: list[BaseException] = []

    def hung() -> None:
        try:
            fetch(f"{site.url}/meetings/agendas.json", timeout=3)
        except OSError as exc:  # URLError wrapping a timeout
            outcome.append(exc)

    t = threading.Thread(target=hung)
    t.start()
    log = wait_for_log(source, lambda log: len(log) == 2)  # the hung request has arrived
    assert (log[1]["fault"], log[1]["status"], log[1]["bytes"], log[1]["done"]) == (
        "hang",
        None,
        0,
        None,
    )
    assert fetch(f"{site.url}/meetings/minutes.json")[0] == 200
    assert t.is_alive(), "answered only after the hung request gave up"  # not held up by it
    t.join()
    assert len(outcome) == 1 and "timed out" in str(outcome[0])
    log = source.requests()
    assert [r["status"] for r in log] == [200, None, 200]
    assert log[1]["done"] is None and log[1]["bytes"] == 0


def test_fault_hold(source: Source) -> None:
    """`hold` answers nothing until the rules are cleared, then answers as usual."""
    site = source.create_site(2, 0)
    source.faults.add(match="agendas", action="hold", times=-1)
    answers: list[int] = []
    url = f"{site.url}/meetings/agendas.json"
    t = threading.Thread(target=lambda: answers.append(fetch(url)[0]))
    t.start()
    log = wait_for_log(source, lambda log: len(log) == 1)  # the held request has arrived
    assert (log[0]["fault"], log[0]["status"]) == ("hold", None)
    assert fetch(f"{site.url}/meetings/minutes.json")[0] == 200  # others are not held up
    assert t.is_alive() and answers == []
    source.faults.clear()
    t.join(timeout=10)
    assert answers == [200]
    assert [(r["fault"], r["status"]) for r in source.requests()] == [("hold", 200), (None, 200)]


def test_fault_ratelimit(source: Source) -> None:
    """`ratelimit` answers civic.band's 402, with Retry-After when asked."""
    site = source.create_site(2, 0)
    source.faults.add(match="agendas", action="ratelimit", retry_after=7)
    status, headers, body = fetch(f"{site.url}/meetings/agendas.json")
    assert status == 402 and headers["retry-after"] == "7"
    assert json.loads(body)["error"] == "rate_limit_exceeded"


def test_rate_limit_emulation(source: Source) -> None:
    """Past per_minute .json requests without the secret get 402; the secret passes."""
    site = source.create_site(2, 0)
    source.ratelimit(per_minute=3, secret="s3cret", retry_after="auto")
    url = f"{site.url}/meetings/agendas.json"
    assert [fetch(url)[0] for _ in range(3)] == [200] * 3
    status, headers, body = fetch(url)
    assert status == 402 and 1 <= int(headers["retry-after"]) <= 61
    assert json.loads(body)["message"] == "Rate limit exceeded. Maximum 3 requests per minute."
    assert fetch(url, headers={"X-Service-Secret": "s3cret"})[0] == 200
    assert fetch(url, headers={"X-Service-Secret": "wrong"})[0] == 402
    assert fetch(f"{site.url}/meetings/agendas")[0] == 200  # HTML pages are not limited
    assert fetch(f"{source.base_url}/nosuch.ca/meetings.json")[0] == 302  # redirect comes first
    source.ratelimit(per_minute=None)
    assert fetch(url)[0] == 200


def test_page_cap(source: Source) -> None:
    """With page_cap, callers without the secret get at most 100 rows a page."""
    site = source.create_site(150, 0)
    source.ratelimit(secret="s3cret", page_cap=True)
    url = f"{site.url}/meetings/agendas.json?_sort=id&_size=1000"
    assert len(get_json(url)[1]["rows"]) == 100
    assert len(get_json(url, headers={"X-Service-Secret": "s3cret"})[1]["rows"]) == 150
    log = source.requests()
    assert log[0]["forwarded_query"] == "_sort=id&_size=100" and log[1]["forwarded_query"] is None


def test_request_log(source: Source) -> None:
    """Every request is logged with method, path, query, headers, status and fault."""
    site = source.create_site(2, 0)
    source.faults.add(match="minutes", action="status", status=500)
    fetch(f"{site.url}/meetings/agendas.json?_size=1", headers={"X-Service-Secret": "k"})
    fetch(f"{site.url}/meetings/minutes.json")
    log = source.requests()
    assert [(r["method"], r["path"], r["query"], r["status"], r["fault"]) for r in log] == [
        ("GET", f"/{site.subdomain}/meetings/agendas.json", "_size=1", 200, None),
        ("GET", f"/{site.subdomain}/meetings/minutes.json", "", 500, "status"),
    ]
    assert log[0]["headers"]["user-agent"] == UA and log[0]["headers"]["x-service-secret"] == "k"
    assert set(log[0]) == {
        *("method", "path", "query", "headers", "status", "fault", "forwarded_query"),
        *("time", "wall", "bytes", "done"),
    }
    source.clear_requests()
    assert source.requests() == []


def test_request_log_clocks_and_bytes(source: Source) -> None:
    """`time`/`done` are monotonic (comparable with ours), `wall` is epoch, `bytes` as sent."""
    site = source.create_site(20, 20)
    mono, wall = time.monotonic(), time.time()
    _, _, full = fetch(f"{site.url}/meetings/agendas.json?_sort=id")
    mono_after, wall_after = time.monotonic(), time.time()
    source.faults.add(match="minutes", action="truncate")
    _, _, cut = fetch(f"{site.url}/meetings/minutes.json?_sort=id")
    first, second = source.requests()
    assert mono <= first["time"] <= first["done"] <= mono_after
    assert wall <= first["wall"] <= wall_after
    assert first["bytes"] == len(full) > 1000
    assert second["bytes"] == len(cut) and second["fault"] == "truncate"
    assert first["done"] <= second["time"] <= second["done"]


def test_site_url_template(source: Source) -> None:
    """site_url (CIVICBAND_SITE_URL) reaches each site's own data; unknown names go to index_url."""
    site = source.create_site(3, 2)
    other = source.create_site(4, 0)
    for s in (site, other):  # different rows each: a mixed-up route shows
        url = source.site_url.format(subdomain=s.subdomain)
        rows, _ = page_all(url, "agendas", 100)
        assert sorted(r["id"] for r in rows) == sorted(s.ids("agendas"))
    sql = "select count(*) as n from minutes"
    _, doc = get_json(count_url(source, source.site_url.format(subdomain=site.subdomain), sql))
    assert rows_of(doc) == [{"n": 2}]
    unknown = source.site_url.format(subdomain="nosuch-site.ca")
    status, headers, _ = fetch(unknown + "/meetings/agendas.json")
    assert status == 302 and headers["location"] == source.index_url
    status, _, body = fetch(source.index_url)
    assert status == 200 and f'data-umami-event-subdomain="{site.subdomain}"'.encode() in body
