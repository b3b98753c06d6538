"""Catch-up's pure parts: the `~` bucket compared row by row, and the shrink guard's message."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
from scrapy.utils.test import get_crawler

from civicband import cost
from civicband import settings as project
from civicband.catchup import (
    CatchUp,
    agrees,
    listed_digest,
    other_difference,
    raw_md5,
    shrink_refusal,
    with_text,
)
from civicband.datasette import SourceError, TablePage
from civicband.digest import Bucket, Difference, content_fp
from civicband.rows import raw_text
from civicband.source import Source
from civicband.spiders.civicband import CivicbandSpider

COLUMNS = ("id", "meeting", "date", "page", "text", "page_image", "entities_json", "votes_json")


def row(row_id, **values):
    return {
        "id": row_id,
        "meeting": "City Council",
        "date": "2024-01-02",
        "page": 1,
        "text": "text",
        "page_image": "/_agendas/x.png",
        **values,
    }


def test_raw_md5_is_the_md5_of_the_raw_text_postgresql_stores():
    one = row(None, text="a\x00b\ud800")
    assert raw_md5(one) == hashlib.md5(raw_text(one).encode("utf-8")).hexdigest()
    assert raw_md5(one) != raw_md5(row(None, text="a\x00b"))


def test_rows_stored_here_with_the_same_content_do_not_differ():
    rows = [row("ABCDEF012345"), row("short"), row("abcdef0123456")]
    pages = {r["id"]: content_fp(r) for r in rows}
    assert other_difference(rows, pages, []) == Difference([], [], [], [])


def test_a_page_changed_at_the_source_is_stale():
    source = [row("ABCDEF012345", page_image="/new.png"), row("short")]
    pages = {"ABCDEF012345": content_fp(row("ABCDEF012345")), "short": content_fp(row("short"))}
    assert other_difference(source, pages, []) == Difference([], [], ["ABCDEF012345"], [])


def test_a_page_the_source_no_longer_has_is_extra():
    pages = {"gone": 1, "ABCDEF012345": content_fp(row("ABCDEF012345")), "also gone": 2}
    difference = other_difference([row("ABCDEF012345")], pages, [])
    assert difference == Difference([], ["also gone", "gone"], [], [])


def test_a_source_row_neither_stored_nor_rejected_is_missing_named_by_its_id():
    source = [row("new one"), row(None), row("")]
    difference = other_difference(source, {}, [])
    assert difference.missing == [
        "'new one' (not 12 hex digits)",
        "None (not 12 hex digits)",
        "'' (not 12 hex digits)",
    ]
    assert (difference.extra, difference.stale, difference.stale_rejections) == ([], [], [])


def test_a_rejected_row_is_known_by_its_raw_content_whatever_its_id():
    nul_id, null_id, blank = row("ab\x00cd"), row(None, text="other"), row("")
    rejected = [("ab\\u0000cd", raw_md5(nul_id)), (None, raw_md5(null_id)), ("", raw_md5(blank))]
    assert other_difference([nul_id, null_id, blank], {}, rejected) == Difference([], [], [], [])


def test_a_rejected_row_changed_at_the_source_is_missing_and_its_old_rejection_gone():
    old, new = row(None, text="before"), row(None, text="after")
    difference = other_difference([new], {}, [(None, raw_md5(old))])
    assert difference == Difference(["None (not 12 hex digits)"], [], [], [raw_md5(old)])


def test_rejections_the_source_no_longer_has_are_listed_by_md5_in_order():
    kept = row(None, text="kept")
    rejected = [(None, "f" * 32), (None, raw_md5(kept)), ("x", "0" * 32)]
    difference = other_difference([kept], {}, rejected)
    assert difference.stale_rejections == ["0" * 32, "f" * 32]
    assert difference.missing == []


def test_two_null_id_rows_are_told_apart_by_content():
    one, two = row(None, text="one"), row(None, text="two")
    difference = other_difference([one, two], {}, [(None, raw_md5(one))])
    assert difference.missing == ["None (not 12 hex digits)"]


def test_an_id_stored_here_as_a_page_is_not_missing_even_if_rejected_elsewhere():
    source = [row("ABC")]
    difference = other_difference(source, {"ABC": content_fp(row("ABC"))}, [("ABC", "9" * 32)])
    assert difference == Difference([], [], [], ["9" * 32])


def test_the_whole_tilde_bucket_at_once():
    source = [
        row("same"),
        row("changed", entities_json='{"a": 1}'),
        row("new"),
        row(None, text="rejected"),
        row(None, text="new null"),
    ]
    pages = {
        "same": content_fp(row("same")),
        "changed": content_fp(row("changed")),
        "vanished": 5,
    }
    rejected = [(None, raw_md5(row(None, text="rejected"))), ("old", "e" * 32)]
    difference = other_difference(source, pages, rejected)
    assert difference == Difference(
        ["'new' (not 12 hex digits)", "None (not 12 hex digits)"],
        ["vanished"],
        ["changed"],
        ["e" * 32],
    )


# ---- shrink_refusal ------------------------------------------------------------------------------


def test_the_shrink_refusal_says_what_and_how_to_accept_it_on_one_line():
    message = shrink_refusal(
        "oakland.ca", "agenda", removing=120, local=1000, source=400, guard=0.5
    )
    assert message == (
        "Refusing to remove 120 of 1000 pages of oakland.ca/agenda: the source holds 400 rows,"
        " below CIVICBAND_SHRINK_GUARD (0.5) of the mirror's (a site caught mid-rebuild?)."
        " Nothing was deleted; run again later, or accept the shrink with -a allow_shrink=true"
    )
    assert "\n" not in message


@pytest.mark.parametrize(
    ("guard", "shown"), [(0.75, "(0.75)"), (1.0, "(1)"), (0.333333333, "(0.333333)")]
)
def test_the_shrink_refusal_shows_the_guard_briefly(guard, shown):
    assert f"CIVICBAND_SHRINK_GUARD {shown}" in shrink_refusal(
        "x", "minutes", removing=1, local=2, source=0, guard=guard
    )


def catch_up(arguments, **settings):
    """A CatchUp and its Source on a crawler with the project's settings and these."""
    values = {k: getattr(project, k) for k in dir(project) if k.isupper()}
    crawler = get_crawler(CivicbandSpider, {**values, **settings})
    crawler.spider = CivicbandSpider.from_crawler(crawler, subdomain="site", **arguments)
    source = Source(crawler)
    return CatchUp(crawler, registry=None, source=source), source


@pytest.mark.parametrize(
    ("secret", "arguments", "limit", "page_size", "request_bytes"),
    [
        ("s", {}, None, 1000, 256 * 1024),
        ("", {}, None, 100, 4 * 1024 * 1024),  # public pages hold 100 rows
        ("s", {}, 100, 100, 256 * 1024),  # a site whose max_returned_rows is 100
        ("s", {"batch_size": "200"}, None, 200, 256 * 1024),  # pages of -a batch_size
    ],
)
def test_the_cost_model_sees_the_pages_and_the_worth_of_a_request(
    secret, arguments, limit, page_size, request_bytes
):
    catchup, source = catch_up(arguments, CIVICBAND_SERVICE_SECRET=secret)
    if limit:
        source.page_limits["site"] = limit
    limits = catchup.limits("site")
    assert (limits.page_size, limits.request_bytes) == (page_size, request_bytes)
    assert limits.max_rows == (limit or 1000)


def test_the_request_bytes_setting_overrides_the_default():
    catchup, _ = catch_up({}, CIVICBAND_SERVICE_SECRET="s", CIVICBAND_REQUEST_BYTES=1000)
    assert catchup.limits("site").request_bytes == 1000


@pytest.mark.parametrize(
    ("new", "changed", "cheaper"),
    [
        (100, 0, False),  # a few new pages: the catch-up
        (0, 10_000, False),  # every value re-extracted: values only cost far fewer bytes
        (9_900, 0, True),  # nearly every page new (a site re-OCR'd): pages cost less
    ],
)
def test_a_full_pass_is_chosen_only_when_the_model_finds_it_cheaper(new, changed, cheaper):
    limits = cost.Limits()
    fetch = cost.fetch_cost(new, changed, limits)
    assert (fetch.units(limits) > cost.full_pass(10_000, limits).units(limits)) is cheaper


def id_bucket(*ids: str, fp: int = 0) -> Bucket:
    """A bucket's count and id sums, as the source's digest gives them."""
    return Bucket(len(ids), sum(int(i[:6], 16) for i in ids), sum(int(i[6:], 16) for i in ids), fp)


def test_answers_that_disagree_with_the_digest_stop_the_catch_up():
    listed = {"ab0000000001": 1, "ab0000000002": 2, "cd0000000001": 3}
    sums = listed_digest(listed, 2)
    assert sums == {
        "ab": id_bucket("ab0000000001", "ab0000000002", fp=3),
        "cd": id_bucket("cd0000000001", fp=3),
    }
    agrees(id_bucket("ab0000000001", "ab0000000002", fp=3), sums["ab"], "ab")  # the same site
    # As many ids as the digest counts, but not the same ones: the site was rebuilt meanwhile.
    other = listed_digest({"ab0000000001": 1, "ab0000000003": 2}, 2)["ab"]
    with pytest.raises(SourceError, match=r"bucket 'ab': 2 rows in its digest, 2 in a later"):
        agrees(sums["ab"], other, "ab")
    with pytest.raises(SourceError, match=r"bucket 'cd': 1 rows in its digest, 0 in a later"):
        agrees(sums["cd"], Bucket(), "cd")
    # The same ids with other values: a later answer shows another site.
    with pytest.raises(SourceError, match="nothing was deleted"):
        agrees(sums["cd"], id_bucket("cd0000000001", fp=4), "cd")


def repeating_source(rows):
    """A Source whose SQL answers the same truncated page whatever it is asked."""
    _, source = catch_up({})

    async def sql(subdomain, query, **params):
        return TablePage([dict(r) for r in rows], None, truncated=True)

    source.sql = sql
    return source


def test_a_listing_cut_short_for_one_bucket_is_an_error_not_a_loop():
    source = repeating_source([{"tag": "agenda", "p": "ab", "packed": "0000000001:1"}])
    with pytest.raises(SourceError, match="bisection answer truncated for one bucket"):
        asyncio.run(source.reads.listing("site", "agenda", ["ab"], {"ab": 1}))


def test_other_rows_that_do_not_advance_are_an_error_not_a_loop():
    source = repeating_source([{"civicband_rowid": 7, **row("X")}])
    with pytest.raises(SourceError, match="rows do not advance past rowid 7"):
        asyncio.run(source.other_rows("site", "agenda"))


# ---- with_text -----------------------------------------------------------------------------------


def known_row(row_id, **values):
    """A page as mirror.known_rows gives it: its id-hashed part."""
    return {
        "id": row_id,
        "meeting": "City Council",
        "date": "2024-01-02",
        "page": 3,
        "text": f"text of {row_id}",
        **values,
    }


def values_row(row_id, **values):
    """A row fetched for its values (Reads.fetch drops the source's null text)."""
    return {
        "id": row_id,
        "meeting": "City Council",
        "date": "2024-01-02",
        "page": 3,
        "page_image": f"/_agendas/{row_id}.png",
        "entities_json": '{"persons": []}',
        "votes_json": None,
        **values,
    }


def test_values_are_made_whole_with_the_mirrors_text():
    known = {i: known_row(i) for i in ("ab0000000001", "004351235980")}
    rows, moved = with_text([values_row("ab0000000001"), values_row("004351235980")], known)
    assert moved == []
    assert rows == [
        {**known_row("ab0000000001"), **values_row("ab0000000001")},
        {**known_row("004351235980"), **values_row("004351235980")},
    ]
    assert rows[0]["text"] == "text of ab0000000001"
    assert rows[0]["page_image"] == "/_agendas/ab0000000001.png"
    assert set(rows[1]) == {*COLUMNS}


def test_the_sources_values_win_over_what_the_mirror_held():
    known = {"ab0000000001": known_row("ab0000000001", page_image="/old.png")}
    rows, _ = with_text([values_row("ab0000000001", page_image="/new.png")], known)
    assert rows[0]["page_image"] == "/new.png"
    assert rows[0]["text"] == "text of ab0000000001"


@pytest.mark.parametrize("change", [{"meeting": "Planning"}, {"date": "2024-01-03"}, {"page": 4}])
def test_an_id_whose_meeting_date_or_page_differs_is_moved(change):
    known = {i: known_row(i) for i in ("ab0000000001", "ab0000000002")}
    fetched = [values_row("ab0000000001", **change), values_row("ab0000000002")]
    rows, moved = with_text(fetched, known)
    assert moved == ["ab0000000001"]
    assert [r["id"] for r in rows] == ["ab0000000002"]


def test_ids_the_mirror_does_not_know_are_dropped():
    known = {"ab0000000001": known_row("ab0000000001")}
    fetched = [values_row("cd0000000001"), values_row("ab0000000001"), values_row(None)]
    rows, moved = with_text(fetched, known)
    assert [r["id"] for r in rows] == ["ab0000000001"]
    assert moved == []
    assert with_text([], known) == ([], [])
