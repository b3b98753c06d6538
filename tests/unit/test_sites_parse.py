"""Reading civic.band's home page table: every field, bad rows skipped, pages that are not it."""

from __future__ import annotations

import pytest

from civicband.args import ArgumentError
from civicband.spiders.sites import (
    Municipality,
    NotAnIndex,
    check_index_url,
    parse_index,
    parse_last_updated,
    parse_pages,
)


def row(
    link: str,
    name: str,
    state: str,
    kind: str,
    pages: str,
    updated: str,
    badge: str = "",
) -> str:
    """One `<tr>` as corkboard's _sites_table_only.html renders it."""
    return f"""
        <tr class="hover:bg-gray-50 transition">
          <td class="px-2 py-2">
            <a {link}
               class="text-indigo-600 hover:text-indigo-900 font-medium block"
               data-umami-event="homepage_muni">
              {name}
              {badge}
              <span class="text-gray-500 sm:hidden">, {state}</span>
            </a>
          </td>
          <td class="px-2 py-2 text-gray-600 hidden sm:table-cell">
            {state}
          </td>
          <td class="px-2 py-2 text-gray-600 capitalize hidden md:table-cell">
            {kind}
          </td>
          <td class="px-2 py-2 text-right text-gray-600 whitespace-nowrap">
            {pages}
          </td>
          <td class="px-2 py-2 text-right text-gray-600 whitespace-nowrap hidden lg:table-cell">
            {updated}
          </td>
        </tr>"""


def page(rows: list[str], heads: tuple[str, ...] | None = None) -> str:
    """civic.band's home page around a table of these rows (a saved copy, abridged)."""
    heads = heads or ("Municipality", "State", "Type", "Pages ↓", "Last Updated")
    th = "\n".join(
        f'<th scope="col" class="px-2 py-2 text-xs font-medium uppercase">\n  {h}\n</th>'
        for h in heads
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Civic Band</title></head>
<body>
<nav><table><tr><td>layout table without a header</td></tr></table></nav>
<div id="sites-table-container">
  <div class="border border-gray-200 rounded rounded-t bg-white">
    <table class="min-w-full divide-y divide-gray-200 text-sm">
      <thead class="bg-gray-50"><tr>
{th}
      </tr></thead>
      <tbody class="bg-white divide-y divide-gray-200">
{"".join(rows)}
      </tbody>
    </table>
  </div>
</div>
<script>window.sitesGeoJSON = {{"type": "FeatureCollection", "features": []}};</script>
</body></html>"""


FINANCE = (
    '<span class="inline-flex items-center px-1.5 py-0.5 ml-2 text-xs font-medium bg-green-100"'
    ' role="note" title="Campaign finance data available">Finance data</span>'
)
OAKLAND = row(
    'href="https://oakland.ca.civic.band" data-umami-event-subdomain="oakland.ca"',
    "Oakland",
    "CA",
    "city",
    "1,237,004",
    "Jan 5, 2025",
    badge=FINANCE,
)
ALAMEDA = row(
    'href="https://alameda-county.ca.civic.band" data-umami-event-subdomain="alameda-county.ca"',
    "Alameda County &amp; Friends",
    "CA",
    "county",
    "98,765",
    "Dec 31, 2024",
)
# No data attribute: the subdomain comes from the link's host.
BERKELEY = row(
    'href="https://berkeley.ca.civic.band/"', "Berkeley", "CA", "city", "12", "Mar 1, 2023"
)


def test_reads_every_field_of_a_saved_page():
    index = parse_index(page([OAKLAND, ALAMEDA, BERKELEY]))
    assert index.rejected == []
    assert index.listed == 3
    assert index.sites == [
        Municipality("oakland.ca", "Oakland", "CA", None, "city", 1237004, "2025-01-05"),
        Municipality(
            "alameda-county.ca",
            "Alameda County & Friends",
            "CA",
            None,
            "county",
            98765,
            "2024-12-31",
        ),
        Municipality("berkeley.ca", "Berkeley", "CA", None, "city", 12, "2023-03-01"),
    ]


def test_the_data_attribute_wins_over_the_link():
    odd = row(
        'href="https://www.example.org/x" data-umami-event-subdomain="Piedmont.CA"',
        "Piedmont",
        "CA",
        "city",
        "7",
        "Jan 1, 2024",
    )
    (site,) = parse_index(page([odd])).sites
    assert site.subdomain == "piedmont.ca"


def test_columns_are_found_by_their_header_and_country_is_read_when_shown():
    heads = ("Pages", "Municipality", "Country", "State / Province", "Type", "Last Updated")
    cells = (
        '<td>3,001</td><td><a href="https://toronto.on.civic.band"'
        ' data-umami-event-subdomain="toronto.on">Toronto</a></td>'
        "<td>Canada</td><td>ON</td><td>city</td><td>Feb 29, 2024</td>"
    )
    (site,) = parse_index(page([f"<tr>{cells}</tr>"], heads)).sites
    assert site == Municipality("toronto.on", "Toronto", "ON", "Canada", "city", 3001, "2024-02-29")


def test_malformed_rows_are_skipped_with_a_reason_and_the_rest_kept():
    bad = [
        row('data-umami-event-subdomain="bad_sub.ca"', "Bad", "CA", "city", "5", "Jan 1, 2024"),
        row('href="https://evil.example/oakland.ca"', "Evil", "CA", "city", "5", "Jan 1, 2024"),
        row(
            'href="https://x.ca.civic.band" data-umami-event-subdomain="x.ca"',
            "X",
            "CA",
            "city",
            "n/a",
            "Jan 1, 2024",
        ),
        "<tr><td>No link</td><td>CA</td><td>city</td><td>1</td><td>Jan 1, 2024</td></tr>",
        "<tr><td>Too short</td></tr>",
        OAKLAND,  # listed twice
    ]
    index = parse_index(page([OAKLAND, *bad, BERKELEY]))
    assert [s.subdomain for s in index.sites] == ["oakland.ca", "berkeley.ca"]
    assert index.listed == 8
    reasons = [(r.row, r.reason) for r in index.rejected]
    assert reasons == [
        (2, "subdomain 'bad_sub.ca' is not a civic.band subdomain"),
        (3, "no civic.band subdomain in link 'https://evil.example/oakland.ca'"),
        (4, "pages is not a number: 'n/a'"),
        (5, "no link to the site"),
        (6, "1 cells, expected 5"),
        (7, "oakland.ca listed twice"),
    ]


BOT_WALL = (
    '<!doctype html><html lang="en"><head><title>Access denied</title></head>'
    "<body><h1>Access denied</h1><p>Making sure you&#39;re not a bot!</p>"
    "<p>Protected by Anubis.</p></body></html>"
)
NO_MATCH = (
    '<div class="px-6 py-12 text-center"><p class="text-gray-500">'
    "No municipalities match your search.</p></div>"
)


@pytest.mark.parametrize(
    ("html", "says"),
    [
        (BOT_WALL, "a bot wall"),
        (NO_MATCH, "no table of municipalities"),
        ("", "no table of municipalities"),
        (page([]), "the table of municipalities is empty"),
        (
            page([row('href="https://nowhere.example"', "N", "CA", "city", "1", "")]),
            "none of its 1 rows",
        ),
    ],
)
def test_a_page_that_is_not_the_index_is_refused(html, says):
    with pytest.raises(NotAnIndex, match=says):
        parse_index(html)


def test_pages_and_dates():
    assert parse_pages(" 1,237 ") == 1237
    assert parse_pages("0") == 0
    for bad in ("", "-3", "1.5", "12k", "—", "²"):
        with pytest.raises(ValueError):
            parse_pages(bad)
    assert parse_last_updated("Jan 5, 2025") == "2025-01-05"
    assert parse_last_updated("Sep 30, 2024") == "2024-09-30"
    assert parse_last_updated("Feb 30, 2024") == "Feb 30, 2024"  # kept as shown
    assert parse_last_updated("yesterday") == "yesterday"
    assert parse_last_updated("  ") is None


def test_index_url_must_be_http():
    assert check_index_url("https://civic.band/") == "https://civic.band/"
    for bad in ("", "civic.band", "file:///etc/passwd", "https://"):
        with pytest.raises(ArgumentError, match="CIVICBAND_INDEX_URL"):
            check_index_url(bad)
