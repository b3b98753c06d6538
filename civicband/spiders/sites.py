"""The `civicband-sites` spider: refresh `municipalities` from the table on civic.band's home page.

civic.band lists every municipality in one HTML table (corkboard's
`templates/pages/_sites_table_only.html`): Municipality / State / Type / Pages / Last Updated,
the subdomain only inside the name's link (`data-umami-event-subdomain`, and the link's host
`https://{subdomain}.civic.band`). Every row is upserted in one transaction; a site that left
the list is reported, never deleted (its mirrored pages stay meaningful).
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Self
from urllib.parse import urlsplit

from parsel import Selector
from scrapy import Request
from scrapy.crawler import Crawler
from scrapy.http import Response, TextResponse
from scrapy.settings import BaseSettings
from scrapy.spidermiddlewares.httperror import HttpError
from twisted.python.failure import Failure

from civicband.args import ArgumentError
from civicband.config import check_settings
from civicband.datasette import SUBDOMAIN
from civicband.db import DatabaseError, one_line, query, redact, wrap_exceptions
from civicband.source import service_headers
from civicband.spiders.base import StoreSpider

logger = logging.getLogger(__name__)

LINK_DOMAIN = ".civic.band"
# Django's "M" (English month abbreviations), whatever the process locale says.
MONTHS = {
    name: number
    for number, name in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"),
        start=1,
    )
}
# Header text (lower case, first word(s)) -> field; the page's column order is not assumed.
COLUMNS = (
    ("municipality", "name"),
    ("name", "name"),
    ("state", "state"),
    ("country", "country"),
    ("type", "kind"),
    ("kind", "kind"),
    ("pages", "pages"),
    ("last updated", "last_updated"),
    ("updated", "last_updated"),
)
# Unlisted sites named in the log at most; the stat has the full count.
UNLISTED_SHOWN = 20


class NotAnIndex(ValueError):
    """The page is not civic.band's table of municipalities (a bot wall, another page, empty)."""


@dataclass(frozen=True)
class Municipality:
    """One row of the index, checked, as it goes into `municipalities`."""

    subdomain: str
    name: str | None
    state: str | None
    country: str | None
    kind: str | None
    pages: int
    last_updated: str | None


@dataclass(frozen=True)
class Rejected:
    """A row of the index that could not be read: its position, why, and what it looked like."""

    row: int
    reason: str
    text: str


@dataclass
class Index:
    """What the home page lists: the sites that parse, and the rows that did not."""

    sites: list[Municipality] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)

    @property
    def listed(self) -> int:
        """Rows in the table, readable or not."""
        return len(self.sites) + len(self.rejected)


def _text(selector: Selector) -> str:
    """A cell's visible text on one line (the page indents everything)."""
    return " ".join(" ".join(selector.xpath(".//text()").getall()).split())


def _columns(table: Selector) -> dict[str, int]:
    """Map fields to column positions from the table's header cells."""
    positions: dict[str, int] = {}
    for position, cell in enumerate(table.xpath("(.//tr[th])[1]/th")):
        header = _text(cell).lower()
        for prefix, name in COLUMNS:
            if header.startswith(prefix):
                positions.setdefault(name, position)
                break
    return positions


def _find_table(page: Selector) -> tuple[Selector, dict[str, int]]:
    """The table whose header names municipalities and pages; anything else is not the index."""
    for table in page.xpath("//table"):
        columns = _columns(table)
        if "name" in columns and "pages" in columns:
            return table, columns
    title = " ".join(page.xpath("//title//text()").getall()).strip()
    hint = f" (page title {title!r})" if title else ""
    if any(word in page.get().lower() for word in ("access denied", "anubis", "not a bot")):
        hint = f" (a bot wall{', ' + repr(title) if title else ''})"
    raise NotAnIndex(f"no table of municipalities{hint}")


def subdomain_of(link: Selector) -> str | None:
    """The site's subdomain: the link's `data-umami-event-subdomain`, else its civic.band host."""
    value = link.attrib.get("data-umami-event-subdomain", "").strip()
    if value:
        return value.lower()
    href = link.attrib.get("href", "").strip()
    try:
        host = urlsplit(href).hostname or ""
    except ValueError:
        return None
    if host.endswith(LINK_DOMAIN) and len(host) > len(LINK_DOMAIN):
        return host[: -len(LINK_DOMAIN)]
    return None


def parse_pages(text: str) -> int:
    """Django's intcomma ("1,237"), or a plain number; anything else is refused."""
    digits = "".join(text.split()).replace(",", "")
    if not (digits.isascii() and digits.isdigit()):
        raise ValueError(f"pages is not a number: {text!r}")
    return int(digits)


def parse_last_updated(text: str) -> str | None:
    """Django's "M j, Y" (Jan 5, 2025) as an ISO date; other text is kept as it is."""
    cleaned = " ".join(text.replace(",", " ").split())
    if not cleaned:
        return None
    parts = cleaned.split(" ")
    if len(parts) == 3 and parts[0][:3].lower() in MONTHS:
        try:
            day = datetime.date(int(parts[2]), MONTHS[parts[0][:3].lower()], int(parts[1]))
        except ValueError:
            return text.strip()
        return day.isoformat()
    return text.strip()


def _read_row(row: Selector, columns: dict[str, int]) -> Municipality:
    """One `<tr>` as a Municipality; ValueError says why it cannot be one."""
    cells = row.xpath("./td")
    if len(cells) <= max(columns.values()):
        raise ValueError(f"{len(cells)} cells, expected {max(columns.values()) + 1}")

    def cell(name: str) -> str | None:
        position = columns.get(name)
        return None if position is None else _text(cells[position]) or None

    name_cell = cells[columns["name"]]
    link = name_cell.xpath(".//a[@href or @data-umami-event-subdomain][1]")
    if not link:
        raise ValueError("no link to the site")
    subdomain = subdomain_of(link[0])
    if subdomain is None:
        raise ValueError(f"no civic.band subdomain in link {link[0].attrib.get('href')!r}")
    if not SUBDOMAIN.fullmatch(subdomain):
        raise ValueError(f"subdomain {subdomain!r} is not a civic.band subdomain")
    # The name is the link's own text: its spans hold ", {state}" and badges ("Finance data").
    name = " ".join(" ".join(link[0].xpath("./text()").getall()).split()) or None
    state = cell("state")
    if state is None:
        hidden = _text(link[0].xpath("./span[last()]")[0]) if link[0].xpath("./span") else ""
        state = hidden.lstrip(", ").strip() or None
    last_updated = cell("last_updated")
    return Municipality(
        subdomain=subdomain,
        name=name,
        state=state,
        country=cell("country"),
        kind=cell("kind"),
        pages=parse_pages(cell("pages") or ""),
        last_updated=parse_last_updated(last_updated) if last_updated else None,
    )


def parse_index(html: str) -> Index:
    """Read civic.band's home page: its sites, and the rows that are not readable as sites."""
    page = Selector(text=html)
    table, columns = _find_table(page)
    rows = table.xpath("./tbody/tr[td] | ./tr[td]")
    if not rows:
        raise NotAnIndex("the table of municipalities is empty")
    index = Index()
    seen: set[str] = set()
    for number, row in enumerate(rows, start=1):
        try:
            site = _read_row(row, columns)
        except ValueError as error:
            index.rejected.append(Rejected(number, str(error), _text(row)[:200]))
            continue
        if site.subdomain in seen:
            index.rejected.append(
                Rejected(number, f"{site.subdomain} listed twice", _text(row)[:200])
            )
            continue
        seen.add(site.subdomain)
        index.sites.append(site)
    if not index.sites:
        raise NotAnIndex(f"none of its {index.listed} rows is readable as a municipality")
    return index


def check_index_url(url: Any) -> str:
    """An http(s) URL with a host, or one line saying what is wrong with it."""
    text = str(url or "").strip()
    try:
        parts = urlsplit(text)
        ok = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        ok = False
    if not ok:
        raise ArgumentError(f"CIVICBAND_INDEX_URL: expected an http(s) URL, got {text!r}")
    return text


class SitesSpider(StoreSpider):
    """Refresh `municipalities` from civic.band's list, so `subdomain=all` means every site."""

    name = "civicband-sites"

    @staticmethod
    def check_arguments(kwargs: dict[str, Any], settings: BaseSettings) -> str:
        """Refuse arguments and settings this spider cannot use, before any request."""
        unknown = sorted(name for name in kwargs if not name.startswith("_"))  # scrapyd's _job
        if unknown:
            raise ArgumentError(f"{unknown[0]}: civicband-sites takes no arguments")
        check_settings(settings)
        return check_index_url(settings.get("CIVICBAND_INDEX_URL"))

    @classmethod
    def from_crawler(cls, crawler: Crawler, *args: Any, **kwargs: Any) -> Self:
        """Build the spider from checked settings and the civicband spider's headers."""
        spider = super().from_crawler(crawler, *args, **kwargs)
        spider.index_url = cls.check_arguments(kwargs, crawler.settings)
        spider.headers = service_headers(crawler.settings, "text/html")
        return spider

    async def start(self) -> AsyncIterator[Request]:
        """Open the database first, so an unreachable one costs civic.band no request."""
        try:
            await self.store.open()
        except DatabaseError as error:
            raise self._stop(str(error), "civicband_database_unavailable") from None
        yield Request(
            self.index_url,
            callback=self.parse,
            errback=self.index_failed,
            headers=self.headers,
            dont_filter=True,
        )

    def _failed(self, message: str) -> None:
        """The index could not be read: nothing is stored and the crawl exits 1."""
        self.crawler.stats.inc_value("civicband/sites/failed")
        logger.error("civic.band index %s: %s; nothing stored", self.index_url, message)

    async def parse(self, response: Response, **kwargs: Any) -> None:
        """Read the table and upsert every readable row in one transaction."""
        if not isinstance(response, TextResponse):
            self._failed(f"answer is not HTML ({response.headers.get('Content-Type')!r})")
            return
        try:
            index = parse_index(response.text)
        except NotAnIndex as error:
            self._failed(f"not the list of municipalities: {error}")
            return
        stats = self.crawler.stats
        stats.set_value("civicband/sites/listed", index.listed)
        stats.set_value("civicband/sites/rejected", len(index.rejected))
        for rejected in index.rejected:
            logger.warning(
                "Index row %d skipped: %s (%s)", rejected.row, rejected.reason, rejected.text
            )
        try:
            added, updated, unlisted = await self._store(index.sites)
        except DatabaseError as error:
            stats.inc_value("civicband/db/errors")
            logger.error(
                "Could not store the municipalities in %s: %s; nothing stored",
                redact(self.store.url or ""),
                error,
            )
            return
        stats.set_value("civicband/sites/added", added)
        stats.set_value("civicband/sites/updated", updated)
        stats.set_value("civicband/sites/unlisted", len(unlisted))
        logger.info(
            "Municipalities: %d listed, %d added, %d updated, %d rows skipped",
            index.listed,
            added,
            updated,
            len(index.rejected),
        )
        if unlisted:
            shown = ", ".join(unlisted[:UNLISTED_SHOWN])
            more = (
                f" and {len(unlisted) - UNLISTED_SHOWN} more"
                if len(unlisted) > UNLISTED_SHOWN
                else ""
            )
            logger.warning(
                "%d municipalities are no longer listed on civic.band (kept): %s%s",
                len(unlisted),
                shown,
                more,
            )

    async def _store(self, sites: list[Municipality]) -> tuple[int, int, list[str]]:
        """Upsert the sites and find those no longer listed, all in one transaction."""
        params = {
            "subdomains": [s.subdomain for s in sites],
            "names": [s.name for s in sites],
            "states": [s.state for s in sites],
            "countries": [s.country for s in sites],
            "kinds": [s.kind for s in sites],
            "pages": [s.pages for s in sites],
            "last_updated": [s.last_updated for s in sites],
        }
        async with wrap_exceptions(), self.store.connection() as conn, conn.transaction():
            cursor = await conn.execute(query("upsert_municipalities"), params)
            row = await cursor.fetchone()
            assert row is not None
            cursor = await conn.execute(
                query("unlisted_municipalities"), {"subdomains": params["subdomains"]}
            )
            unlisted = [subdomain for (subdomain,) in await cursor.fetchall()]
        return int(row[0]), int(row[1]), unlisted

    def index_failed(self, failure: Failure) -> None:
        """The index never answered with a page (HTTP error after retries, network, timeout)."""
        if failure.check(HttpError):
            response = failure.value.response
            self._failed(f"HTTP {response.status}")
            return
        self._failed(f"{failure.type.__name__}: {one_line(failure.value)}")
