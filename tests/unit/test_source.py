"""Asking a site: a site whose table lacks the JSON columns is asked again without them."""

from __future__ import annotations

import asyncio
from typing import Any

from scrapy.utils.test import get_crawler

from civicband import settings as project
from civicband.datasette import LacksColumn, TablePage
from civicband.reads import COLUMNS, LEGACY_COLUMNS
from civicband.source import Source


def test_a_site_without_the_json_columns_is_asked_again_without_them_and_counted():
    values = {name: getattr(project, name) for name in dir(project) if name.isupper()}
    crawler = get_crawler(settings_dict={k: v for k, v in values.items() if k != "EXTENSIONS"})
    source = Source.from_crawler(crawler)
    asked: list[tuple[str, ...]] = []
    answer = TablePage(rows=[{"n": 1}], next=None, truncated=False)

    async def sql(subdomain: str, text: str, **params: Any) -> TablePage:
        asked.append(params["columns"])
        if params["columns"] == COLUMNS:
            raise LacksColumn("the table lacks a column the query names")
        return answer

    source.sql = sql  # type: ignore[method-assign]
    page = asyncio.run(
        source.reads._with_columns("old.ca", lambda cols: ("SELECT 1", {"columns": cols}))
    )
    assert page is answer
    assert asked == [COLUMNS, LEGACY_COLUMNS]
    assert crawler.stats.get_value("civicband/source/legacy_answers") == 1
