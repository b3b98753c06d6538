"""Reads (civicband/reads.py) over a fake Source.sql that answers from SQLite, as Datasette would.

The fake records every request, answers at most `cap` rows (saying `truncated` past them, as
max_returned_rows does), raises Interrupted when told to, LacksColumn where SQLite finds no such
column, and refuses a URL longer than the Source's limit: the same rules Source.sql applies.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from civicband import datasette
from civicband.bisect import LIST_DEPTH, Ask
from civicband.datasette import Interrupted, LacksColumn, SourceError, TablePage
from civicband.digest import HEX_ID, OTHER
from civicband.reads import DIGEST_CONCURRENCY
from tests.unit.test_bisect import (
    COLUMNS,
    LEGACY_COLUMNS,
    agenda_rows,
    conforming,
    deep_ids,
    minutes_rows,
    only,
    python_listing,
    python_subdigest,
    site,
)
from tests.unit.test_catchup import catch_up
from tests.unit.test_digest import make_rows, python_digest, query


@dataclass
class Call:
    sql: str
    params: dict[str, Any]
    split_on_interrupt: bool
    url: str

    def items(self, name: str) -> list[str]:
        """The items (prefixes or ids) one joined parameter carried."""
        value = self.params.get(name)
        return value.split(".") if value else []


@dataclass
class FakeSite:
    """Source.sql answered by SQLite."""

    source: Any
    conn: sqlite3.Connection
    cap: int = 1000
    interrupt: Callable[[Call], bool] = lambda call: False
    calls: list[Call] = field(default_factory=list)
    max_calls: int = 200

    async def sql(self, subdomain, sql, *, split_on_interrupt=False, **params):
        url = datasette.sql_url(self.source.root(subdomain), "1.0", sql, **params)
        call = Call(sql, params, split_on_interrupt, url)
        self.calls.append(call)
        assert len(self.calls) <= self.max_calls, "the reads loop"
        assert len(url) <= self.source.url_limit, f"URL of {len(url)} past the limit"
        if self.interrupt(call):
            raise Interrupted("the query hit the site's time limit")
        try:
            rows = query(self.conn, sql, params)
        except sqlite3.OperationalError as error:
            if "no such column" in str(error):
                raise LacksColumn(str(error)) from None
            raise
        return TablePage(rows[: self.cap], None, truncated=len(rows) > self.cap)


def fake(conn, **kw) -> tuple[Any, FakeSite]:
    _, source = catch_up({})
    answering = FakeSite(source, conn, **kw)
    source.sql = answering.sql
    return source, answering


def run(coroutine):
    return asyncio.run(coroutine)


async def collect(iterator):
    return [item async for item in iterator]


def both_tables(legacy_minutes: bool = False):
    agendas, minutes = agenda_rows(), minutes_rows()
    columns = {"agendas": COLUMNS, "minutes": LEGACY_COLUMNS if legacy_minutes else COLUMNS}
    if legacy_minutes:
        minutes = only(minutes, LEGACY_COLUMNS)
    return agendas, minutes, site({"agendas": agendas, "minutes": minutes}, columns)


# ---- digests -------------------------------------------------------------------------------------


def test_digests_of_both_tables_come_from_one_request():
    agendas, minutes, conn = both_tables()
    source, answering = fake(conn)
    got = run(source.reads.digests("site", {"agenda": len(agendas), "minutes": len(minutes)}))
    assert got == {"agenda": python_digest(agendas), "minutes": python_digest(minutes)}
    assert len(answering.calls) == 1
    assert got["agenda"][OTHER].n > 10  # the hostile ids are counted in `~`


def test_a_merged_digest_that_lacks_a_column_is_asked_table_by_table():
    agendas, minutes, conn = both_tables(legacy_minutes=True)
    source, answering = fake(conn)
    got = run(source.reads.digests("site", {"agenda": 0, "minutes": 0}))
    assert got == {"agenda": python_digest(agendas), "minutes": python_digest(minutes)}
    # Both (refused), agendas alone, minutes alone (refused), minutes without the two columns.
    assert len(answering.calls) == 4
    assert ["minutes" in c.sql for c in answering.calls] == [True, False, True, True]
    assert ["votes_json" in c.sql for c in answering.calls] == [True, True, True, False]


def test_a_merged_digest_that_hits_the_time_limit_is_asked_table_by_table_not_in_ranges():
    agendas, minutes, conn = both_tables()
    source, answering = fake(conn, interrupt=lambda call: "union all" in call.sql)
    got = run(source.reads.digests("site", {"agenda": len(agendas), "minutes": len(minutes)}))
    assert got == {"agenda": python_digest(agendas), "minutes": python_digest(minutes)}
    assert ["union all" in c.sql for c in answering.calls] == [True, False, False]
    assert all(not c.params.get("low") and not c.params.get("high") for c in answering.calls)


def test_tables_large_together_are_asked_one_by_one_from_the_start():
    agendas, minutes, conn = both_tables()
    source, answering = fake(conn)
    source.split_rows = len(agendas) + len(minutes) - 1
    got = run(source.reads.digests("site", {"agenda": len(agendas), "minutes": len(minutes)}))
    assert got == {"agenda": python_digest(agendas), "minutes": python_digest(minutes)}
    assert len(answering.calls) == 2 and not any("union all" in c.sql for c in answering.calls)


# ---- bisect --------------------------------------------------------------------------------------


def expected_digests(rows, ask):
    found = {}
    for prefix in ask.prefixes:
        found |= python_subdigest(rows, prefix, ask.depth)
    return found


ASKS = {
    "agenda": Ask(4, ("ab", "0", "3", "7")),
    "minutes": Ask(LIST_DEPTH, ("ab", "cd", "12", "e")),
}


def check_answers(got, agendas, minutes):
    assert got["agenda"].digests == expected_digests(agendas, ASKS["agenda"])
    assert got["minutes"].listed == python_listing(minutes, ASKS["minutes"].prefixes)
    assert got["agenda"].listed == {} and got["minutes"].digests == {}


def test_a_round_of_bisection_for_both_tables_is_one_request():
    agendas, minutes, conn = both_tables()
    source, answering = fake(conn)
    got = run(source.reads.bisect("site", ASKS, {}))
    check_answers(got, agendas, minutes)
    assert len(answering.calls) == 1
    assert answering.calls[0].items("agenda") == ["ab", "0", "3", "7"]
    assert answering.calls[0].params["minutes_d"] == "12"


def test_a_merged_bisection_that_lacks_a_column_is_asked_table_by_table():
    agendas, minutes, conn = both_tables(legacy_minutes=True)
    source, answering = fake(conn)
    got = run(source.reads.bisect("site", ASKS, {}))
    check_answers(got, agendas, minutes)
    asked = [
        (c.items("agenda"), c.items("minutes"), "votes_json" in c.sql) for c in answering.calls
    ]
    assert asked == [
        (["ab", "0", "3", "7"], ["ab", "cd", "12", "e"], True),  # refused
        (["ab", "0", "3", "7"], [], True),
        ([], ["ab", "cd", "12", "e"], True),  # refused
        ([], ["ab", "cd", "12", "e"], False),
    ]


def test_a_truncated_bisection_is_split_in_halves_never_taken_for_complete():
    agendas, minutes, conn = both_tables()
    source, answering = fake(conn, cap=3)  # a site whose max_returned_rows is 3, not yet known
    got = run(source.reads.bisect("site", ASKS, {}))
    check_answers(got, agendas, minutes)
    sizes = [len(c.items("agenda")) + len(c.items("minutes")) for c in answering.calls]
    assert sizes == [8, 4, 2, 2, 4, 2, 2]  # 8 buckets (one answer row each) halved until <= 3


@pytest.mark.parametrize("prefixes", [("ab",), ("ab", "cd")])
def test_a_lone_bucket_truncated_is_an_error(prefixes):
    _, _, conn = both_tables()
    source, answering = fake(conn, cap=0)
    got = run(source.reads.bisect("site", {"minutes": Ask(LIST_DEPTH, prefixes)}, {}))
    assert isinstance(got["minutes"], SourceError)
    assert "truncated for one bucket" in str(got["minutes"])
    assert len(answering.calls) == len(prefixes)  # both together, then the first alone


def test_an_interrupted_bisection_is_split():
    agendas, minutes, conn = both_tables()

    def too_big(call):  # more than two buckets hit the time limit
        return len(call.items("agenda")) + len(call.items("minutes")) > 2

    source, answering = fake(conn, interrupt=too_big)
    got = run(source.reads.bisect("site", ASKS, {}))
    check_answers(got, agendas, minutes)
    sizes = [len(c.items("agenda")) + len(c.items("minutes")) for c in answering.calls]
    assert sizes == [8, 4, 2, 2, 4, 2, 2]
    # Only a batch that can be split asks the middleware to hand back an interrupted answer.
    assert all(c.split_on_interrupt for c in answering.calls)


def test_batches_respect_the_url_limit():
    agendas, minutes, conn = both_tables()
    source, answering = fake(conn)
    base = source.reads._bisect_url("site", ASKS)([])
    source.url_limit = base + 14  # "&agenda=" and a few buckets of 1 or 2 digits
    got = run(source.reads.bisect("site", ASKS, {}))
    check_answers(got, agendas, minutes)
    assert all(len(c.url) <= source.url_limit for c in answering.calls)  # the fake checks too
    asked = [(c.items("agenda"), c.items("minutes")) for c in answering.calls]
    assert asked == [
        (["ab", "0", "3"], []),
        (["7"], []),
        ([], ["ab", "cd"]),
        ([], ["12", "e"]),
    ]


def test_a_url_limit_too_small_for_one_bucket_is_an_error_before_any_request():
    _, _, conn = both_tables()
    source, answering = fake(conn)
    source.url_limit = source.reads._bisect_url("site", ASKS)([]) + 2
    with pytest.raises(SourceError, match="longer than URLLENGTH_LIMIT"):
        run(source.reads.bisect("site", ASKS, {}))
    assert answering.calls == []


def test_batches_respect_the_answers_row_cap():
    agendas, minutes, conn = both_tables()
    source, answering = fake(conn)
    source.page_limits["site"] = 3  # known: packed up front, no truncated answer
    got = run(source.reads.bisect("site", ASKS, {}))
    check_answers(got, agendas, minutes)
    sizes = [len(c.items("agenda")) + len(c.items("minutes")) for c in answering.calls]
    assert sizes == [3, 3, 2]


def test_batches_respect_split_rows():
    agendas, minutes, conn = both_tables()
    source, answering = fake(conn)
    source.split_rows = 100
    rows = {"agenda": {"ab": 60, "0": 60, "3": 30, "7": 10}, "minutes": {"ab": 90, "cd": 5}}
    got = run(source.reads.bisect("site", ASKS, rows))
    check_answers(got, agendas, minutes)
    asked = [c.items("agenda") + c.items("minutes") for c in answering.calls]
    assert asked == [["ab"], ["0", "3", "7"], ["ab", "cd", "12", "e"]]


# ---- fetch ---------------------------------------------------------------------------------------


def fetched_ids(fetched):
    found: dict[tuple[str, bool], list[str]] = {}
    for f in fetched:
        found.setdefault((f.document_type, f.whole), []).extend(r["id"] for r in f.rows)
    return {k: sorted(v) for k, v in found.items()}


def test_fetch_of_both_tables_whole_and_values_is_one_request():
    agendas, minutes, conn = both_tables()
    source, answering = fake(conn)
    a = [r["id"] for r in conforming(agendas)]
    m = [r["id"] for r in conforming(minutes)]
    wanted = {("agenda", True): a[:4], ("agenda", False): a[4:9], ("minutes", False): m[:3]}
    got = run(collect(source.reads.fetch("site", wanted)))
    assert len(answering.calls) == 1
    assert fetched_ids(got) == {k: sorted(v) for k, v in wanted.items()}
    by_id = {r["id"]: r for r in agendas if isinstance(r["id"], str)}
    for f in got:
        for r in f.rows:
            assert "tag" not in r
            if f.whole:
                assert r == {c: by_id[r["id"]][c] for c in COLUMNS}
            else:
                assert "text" not in r  # the mirror's text is kept, never the source's null
                assert set(r) == {"id", "meeting", "date", "page", *COLUMNS[5:]}


def test_fetch_keeps_all_digit_ids_as_text():
    rows = make_rows(["004351235980", "123456789012"])
    source, _ = fake(site({"agendas": rows, "minutes": []}))
    got = run(collect(source.reads.fetch("site", {("agenda", True): ["004351235980"]})))
    assert [r["id"] for f in got for r in f.rows] == ["004351235980"]


def test_a_truncated_fetch_is_asked_again_for_the_ids_it_lacked():
    agendas, _, conn = both_tables()
    source, answering = fake(conn, cap=3)
    ids = sorted(r["id"] for r in conforming(agendas))[:8]
    got = run(collect(source.reads.fetch("site", {("agenda", True): ids})))
    assert fetched_ids(got) == {("agenda", True): ids}
    asked = [c.items("agenda_w") for c in answering.calls]
    assert [len(a) for a in asked] == [8, 5, 2]
    for before, after in zip(asked, asked[1:], strict=False):  # only what was not answered
        answered = set(before) - set(after)
        assert len(answered) == 3 and set(after) <= set(before)


def test_a_truncated_fetch_that_brings_none_of_its_ids_fails_rather_than_loop():
    agendas, _, conn = both_tables()
    source, answering = fake(conn, cap=0)
    ids = [r["id"] for r in conforming(agendas)][:4]
    with pytest.raises(SourceError, match="truncated with no rows"):
        run(collect(source.reads.fetch("site", {("agenda", True): ids})))
    assert len(answering.calls) == 1


def test_a_merged_fetch_that_lacks_a_column_is_asked_table_by_table():
    agendas, minutes, conn = both_tables(legacy_minutes=True)
    source, answering = fake(conn)
    a = [r["id"] for r in conforming(agendas)][:3]
    m = [r["id"] for r in conforming(minutes)][:3]
    wanted = {("agenda", True): a, ("minutes", True): m[:1], ("minutes", False): m[1:]}
    got = run(collect(source.reads.fetch("site", wanted)))
    assert fetched_ids(got) == {k: sorted(v) for k, v in wanted.items()}
    assert len(answering.calls) == 4
    legacy = [r for f in got if f.document_type == "minutes" for r in f.rows]
    assert legacy and all(r["votes_json"] is None for r in legacy)


def test_fetches_respect_the_url_limit():
    agendas, _, conn = both_tables()
    source, answering = fake(conn)
    ids = sorted(r["id"] for r in conforming(agendas))[:20]
    base = source.reads._fetch_url("site", [("agenda", True)])([])
    source.url_limit = base + 10 + 13 * 6  # about six ids a request
    got = run(collect(source.reads.fetch("site", {("agenda", True): ids})))
    assert fetched_ids(got) == {("agenda", True): ids}
    assert len(answering.calls) == 4
    assert sum(len(c.items("agenda_w")) for c in answering.calls) == 20


# ---- capacity ------------------------------------------------------------------------------------


def test_capacity_grows_with_the_url_limit():
    _, source = catch_up({})
    source.url_limit = 8000
    ids, buckets = source.reads.capacity("site")
    source.url_limit = 16000
    more_ids, more_buckets = source.reads.capacity("site")
    assert more_ids - ids in (8000 // 13, 8000 // 13 + 1)  # 13 characters an id
    assert more_buckets - buckets == 8000 // 4  # 4 characters a bucket of 3 hex digits
    assert ids > 100 and buckets > 100  # URLLENGTH_LIMIT 8000 carries hundreds of either


def test_capacity_is_at_least_one_when_the_sql_alone_fills_the_url():
    _, source = catch_up({})
    source.url_limit = 100
    assert source.reads.capacity("site") == (1, 1)


# ---- values (ranges) ----------------------------------------------------------------------------


@pytest.mark.parametrize("cap", [1000, 7])
def test_values_page_through_a_range_in_id_order(cap):
    agendas, _, conn = both_tables()
    source, answering = fake(conn, cap=cap)
    pages = run(collect(source.reads.values("site", "agenda", ["ab"], located=True)))
    got = [r["id"] for page in pages for r in page]
    assert got == sorted(r["id"] for r in conforming(agendas) if r["id"].startswith("ab"))
    assert len(answering.calls) == len(pages)
    assert all("meeting" in r for page in pages for r in page)


def test_values_cover_deep_buckets_of_minutes_too():
    rows = make_rows(deep_ids("cd", 30, 5))
    source, _ = fake(site({"agendas": [], "minutes": rows}))
    pages = run(collect(source.reads.values("site", "minutes")))
    assert [r["id"] for page in pages for r in page] == sorted(r["id"] for r in rows)


@pytest.mark.parametrize("prefixes", [("ab",), ("ab", "cd")])
def test_a_lone_bucket_interrupted_fails_its_table_with_the_interrupt(prefixes):
    """A lone bucket that still hits the time limit fails (Reads.bisect's docstring): it is
    never split into an empty batch, whose SQL names no table, nor asked again and again."""
    _, _, conn = both_tables()

    def always(call):  # the site cannot answer any of these buckets in time
        assert call.items("minutes"), "a bisection request that asks no bucket"
        return True

    source, answering = fake(conn, interrupt=always, max_calls=10)
    got = run(source.reads.bisect("site", {"minutes": Ask(LIST_DEPTH, prefixes)}, {}))
    assert isinstance(got["minutes"], Interrupted)
    # Both together (split on interrupt), then the first alone, which fails the bisection.
    expected = [list(prefixes), ["ab"]] if len(prefixes) > 1 else [["ab"]]
    assert [c.items("minutes") for c in answering.calls] == expected
    assert [c.split_on_interrupt for c in answering.calls] == [len(c) > 1 for c in expected]


# ---- a table that lacks more than an older site does ------------------------------------------

# Not even page_image: both the full and the legacy SQL name a column it lacks.
BARE = ("id", "meeting", "date", "page", "text")


def bare_site():
    rows = [{c: r[c] for c in BARE} for r in make_rows(["ab0000000001", "ab0000000002"])]
    return site({"agendas": rows, "minutes": []}, {"agendas": BARE})


def test_bisect_of_a_table_lacking_even_legacy_columns_fails_rather_than_loop():
    source, answering = fake(bare_site())
    got = run(source.reads.bisect("s", {"agenda": Ask(LIST_DEPTH, ("ab",))}, {"agenda": {"ab": 2}}))
    assert isinstance(got["agenda"], SourceError)
    assert len(answering.calls) <= 4


def test_fetch_from_a_table_lacking_even_legacy_columns_fails_rather_than_loop():
    source, answering = fake(bare_site())
    with pytest.raises(SourceError):
        run(collect(source.reads.fetch("s", {("agenda", False): ["ab0000000001"]})))
    assert len(answering.calls) <= 4


def test_digest_of_a_table_lacking_even_legacy_columns_fails_rather_than_loop():
    source, answering = fake(bare_site())
    with pytest.raises(SourceError):
        run(source.reads.digests("s", {"agenda": 2, "minutes": 0}))
    assert len(answering.calls) <= 6


def test_value_ranges_of_many_buckets_are_asked_within_the_url_limit():
    agendas, _, conn = both_tables()
    source, answering = fake(conn)
    source.url_limit = 1500
    prefixes = [f"{i:03x}" for i in range(4096)]
    rows = [
        r for answer in run(collect(source.reads.values("s", "agenda", prefixes))) for r in answer
    ]
    conforming = sorted(
        r["id"] for r in agendas if isinstance(r["id"], str) and HEX_ID.match(r["id"])
    )
    assert [r["id"] for r in rows] == conforming
    assert len(answering.calls) > 1


def test_a_bucket_one_table_cannot_answer_fails_that_table_not_the_other():
    agendas, minutes, conn = both_tables()
    asks = {"agenda": Ask(LIST_DEPTH, ("ab",)), "minutes": Ask(LIST_DEPTH, ("ab", "cd"))}

    def agendas_too_slow(call):  # agendas' bucket never answers in time, alone or not
        return bool(call.items("agenda"))

    source, _ = fake(conn, interrupt=agendas_too_slow)
    got = run(source.reads.bisect("site", asks, {}))
    assert isinstance(got["agenda"], Interrupted)
    assert got["minutes"].listed == python_listing(minutes, ("ab", "cd"))


def test_a_large_tables_id_ranges_are_asked_a_few_at_once():
    agendas, _, conn = both_tables()
    source, answering = fake(conn)
    answer = source.sql
    inflight: list[int] = []
    peak = [0]

    async def sql(*args, **kwargs):
        inflight.append(1)
        peak[0] = max(peak[0], len(inflight))
        await asyncio.sleep(0)  # let the other ranges ask meanwhile
        try:
            return await answer(*args, **kwargs)
        finally:
            inflight.pop()

    source.sql = sql
    source.split_rows = 1
    got = run(source.reads.digests("site", {"agenda": len(agendas)}))
    assert got == {"agenda": python_digest(agendas)}
    assert len(answering.calls) == 16
    assert peak[0] == DIGEST_CONCURRENCY
