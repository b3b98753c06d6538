"""A full pass asks its source digest range by range as it leaves each id range behind."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from civicband.digest import Bucket, IdRange
from civicband.verification import Verify
from tests.unit.test_catchup import catch_up


class Job(SimpleNamespace):
    """What Verify reads of a job: its id, site, type, count, last id and steps."""


def verify_with_recorded_ranges(split_rows: int = 100):
    catchup, source = catch_up({})
    source.split_rows = split_rows
    asked: list[IdRange] = []

    async def range_digest(subdomain, document_type, id_range):
        asked.append(id_range)
        return {(id_range.low or "0")[:1] + "0": Bucket(1)}

    source.reads.range_digest = range_digest
    verify = Verify(catchup.crawler, registry=None, source=source)
    return verify, asked


def job(**kw) -> Job:
    return Job(job_id=1, subdomain="s", document_type="agenda", tasks=set(), **kw)


def test_ranges_left_behind_are_asked_while_the_pass_goes_on_and_the_rest_at_the_end():
    async def main():
        verify, asked = verify_with_recorded_ranges()
        pass_ = job(rows_expected=1000, last_id="3abc00000000")  # past ranges 0, 1 and 2
        verify.page_fetched(pass_, final=False)
        await asyncio.sleep(0)
        early = list(asked)
        pass_.last_id = "3fff00000000"  # still within range 3: nothing more
        verify.page_fetched(pass_, final=False)
        await asyncio.sleep(0)
        again = list(asked)
        got, note = await verify._digest_for(pass_)
        return early, again, asked, got, note

    early, again, asked, got, note = asyncio.run(main())
    assert [(r.low, r.high) for r in early] == [(None, "1"), ("1", "2"), ("2", "3")]
    assert again == early
    assert len(asked) == 16 and len(set(asked)) == 16  # each range once, the rest at the end
    assert note == "" and sum(b.n for b in got.values()) == 16


def test_nothing_is_asked_early_before_the_source_count_is_known():
    async def main():
        verify, asked = verify_with_recorded_ranges()
        verify.page_fetched(job(rows_expected=None, last_id="f" * 12), final=False)
        await asyncio.sleep(0)
        return asked

    assert asyncio.run(main()) == []


def test_a_small_table_is_one_range_asked_at_its_last_page():
    async def main():
        verify, asked = verify_with_recorded_ranges(split_rows=10_000)
        pass_ = job(rows_expected=1000, last_id="e" * 12)
        verify.page_fetched(pass_, final=False)
        await asyncio.sleep(0)
        before = list(asked)
        verify.page_fetched(pass_, final=True)
        await asyncio.sleep(0)
        return before, asked

    before, asked = asyncio.run(main())
    assert before == [] and asked == [IdRange()]
