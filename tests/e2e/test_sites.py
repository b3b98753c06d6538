"""End to end: `scrapy crawl civicband-sites` reads the look-alike's home page into PostgreSQL.

The shared look-alike's index lists every site the session created, so these tests use a
look-alike of their own (same Datasette line as `source`, started once for this module): its
index lists only this module's sites, which makes `subdomain=all` cheap and exact. The home
page is not Datasette and is the same on both lines, so only the test that goes on to crawl
the sites runs on both.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from civicband.datasette import SUBDOMAIN
from tests.e2e.crawl import SECRET, crawl, expected, fetch, jobs, mirrored
from tests.lookalike.fixtures import LookalikeServer, Source

TABLES = {"agenda": "agendas", "minutes": "minutes"}


@pytest.fixture(scope="module")
def own_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, LookalikeServer]]:
    """This module's look-alikes, one per Datasette line, started on first use."""
    servers: dict[str, LookalikeServer] = {}
    yield servers
    for server in servers.values():
        server.stop()


@pytest.fixture
def index(
    source: Source,
    own_servers: dict[str, LookalikeServer],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Source]:
    """A look-alike on `source`'s Datasette line whose index lists only this module's sites."""
    server = own_servers.get(source.version)
    if server is None:
        root = tmp_path_factory.mktemp("sites-index", numbered=True) / "sites"
        server = own_servers[source.version] = LookalikeServer(source.version, root)
    own = Source(server)
    own.reset()
    yield own
    own.reset()


def listed(index: Source) -> list[str]:
    """Every subdomain the index page lists (the look-alike lists every site folder)."""
    return sorted(path.parent.name for path in Path(index.root).glob("*/meetings.db"))


def valid(names: list[str]) -> list[str]:
    return [name for name in names if SUBDOMAIN.fullmatch(name)]


def municipalities(database_url: str) -> dict[str, dict]:
    rows = fetch(database_url, "SELECT * FROM municipalities")
    return {row["subdomain"]: row for row in rows}


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if " ERROR: " in line or "error:" in line]


@pytest.mark.datasette("ds10")
def test_every_listed_site_is_stored_and_a_rerun_updates_them(database_url, index):
    town = index.create_site(
        agendas=7,
        minutes=5,
        meta={"name": "Town & Country's <Village>", "state": "CA", "kind": "town",
              "last_updated": "2025-01-05"},
    )  # fmt: skip
    borough = index.create_site(
        agendas=3,
        minutes=0,
        meta={
            "name": "L'Île-Bizard",
            "state": "QC",
            "kind": "borough",
            "last_updated": "2024-12-31",
        },
    )
    plain = index.create_site(agendas=2, minutes=1)  # no site.json: the look-alike's defaults
    bad = index.create_site(agendas=1, minutes=0, subdomain="bad_sub.ca")
    everything = listed(index)
    good = valid(everything)

    result = crawl(database_url, index, spider="civicband-sites")
    assert result.returncode == 0, result
    stats = result.stats
    assert stats["civicband/sites/listed"] == len(everything)
    assert stats["civicband/sites/added"] == len(good)
    assert stats.get("civicband/sites/updated", 0) == 0
    assert stats["civicband/sites/rejected"] == len(everything) - len(good) >= 1
    assert f"'{bad.subdomain}' is not a civic.band subdomain" in result.stderr
    stored = municipalities(database_url)
    assert sorted(stored) == good
    fields = ("name", "state", "country", "kind", "pages", "last_updated")
    assert {f: stored[town.subdomain][f] for f in fields} == {
        "name": "Town & Country's <Village>",
        "state": "CA",
        "country": None,
        "kind": "town",
        "pages": 12,
        "last_updated": "2025-01-05",
    }
    assert {f: stored[borough.subdomain][f] for f in fields} == {
        "name": "L'Île-Bizard",
        "state": "QC",
        "country": None,
        "kind": "borough",
        "pages": 3,
        "last_updated": "2024-12-31",
    }
    head, _, tail = plain.subdomain.partition(".")
    row = stored[plain.subdomain]
    assert (row["name"], row["state"], row["kind"], row["pages"]) == (
        head.replace("-", " ").title(),
        tail.upper(),
        "city",
        3,
    )
    assert datetime.date.fromisoformat(row["last_updated"])
    # One request, to the index only, with the honest user agent and the secret, never logged.
    (request,) = index.requests()
    assert request["path"] == "/"
    assert request["headers"]["user-agent"].startswith("civicband/")
    assert request["headers"]["x-service-secret"] == SECRET
    assert SECRET not in result.stderr + result.stdout

    # A site civic.band no longer lists stays, reported; every listed one is updated, none added.
    fetch(database_url, "INSERT INTO municipalities (subdomain) VALUES ('gone.zz') RETURNING 1")
    again = crawl(database_url, index, spider="civicband-sites")
    assert again.returncode == 0, again
    stats = again.stats
    assert stats.get("civicband/sites/added", 0) == 0
    assert stats["civicband/sites/updated"] == len(good)
    assert stats["civicband/sites/unlisted"] == 1
    assert re.search(r"1 municipalities are no longer listed.*gone\.zz", again.stderr)
    after = municipalities(database_url)
    assert sorted(after) == sorted([*good, "gone.zz"])
    for subdomain in good:
        assert {f: after[subdomain][f] for f in fields} == {f: stored[subdomain][f] for f in fields}
        assert after[subdomain]["created"] == stored[subdomain]["created"]
        assert after[subdomain]["modified"] > stored[subdomain]["modified"]


@pytest.mark.datasette("ds10")
@pytest.mark.parametrize(
    ("fault", "says"),
    [
        ({"action": "html"}, "not the list of municipalities: no table of municipalities (a bot"),
        ({"action": "status", "status": 503}, "HTTP 503"),
    ],
    ids=["bot-wall", "http-503"],
)
def test_an_index_that_is_not_the_table_fails_and_stores_nothing(database_url, index, fault, says):
    index.create_site(agendas=2, minutes=0)
    # The fault layer matches path + "?" + query: the home page is "/?".
    index.faults.add(match=r"^/\?", times=-1, **fault)
    result = crawl(
        database_url,
        index,
        spider="civicband-sites",
        settings={"RETRY_TIMES": 1, "CIVICBAND_BACKOFF_BASE": 0},
    )
    assert result.returncode == 1, result
    assert result.stats["civicband/sites/failed"] == 1
    (line,) = [line for line in error_lines(result.stderr) if "civic.band index" in line]
    assert says in line and "nothing stored" in line, line
    assert "Traceback" not in result.stderr
    assert fetch(database_url, "SELECT count(*) AS n FROM municipalities")[0]["n"] == 0


def test_all_after_sites_crawls_exactly_the_listed_sites(database_url, index):
    sites = [index.create_site(agendas=6, minutes=4), index.create_site(agendas=3, minutes=0)]
    result = crawl(database_url, index, spider="civicband-sites")
    assert result.returncode == 0, result
    good = valid(listed(index))
    assert sorted(municipalities(database_url)) == good

    result = crawl(database_url, index, "subdomain=all")
    assert result.returncode == 0, result
    done = jobs(database_url)
    assert sorted({job["subdomain"] for job in done}) == good
    assert len(done) == 2 * len(good)
    assert all(job["status"] == "completed" for job in done), done
    for site in sites:
        for document_type, table in TABLES.items():
            assert mirrored(database_url, site.subdomain, document_type) == expected(site, table)
    crawled = {r["path"].split("/")[1] for r in index.requests() if "/meetings/" in r["path"]}
    assert sorted(crawled) == good


@pytest.mark.datasette("ds10")
def test_unreachable_database_exits_2_and_asks_civic_band_nothing(index):
    url = "postgresql://mirror:hunter2@127.0.0.1:9/civicband"
    result = crawl(url, index, spider="civicband-sites")
    assert result.returncode == 2, result
    (line,) = error_lines(result.stderr)
    assert "mirror:***@127.0.0.1:9" in line
    assert "hunter2" not in result.stderr and "Traceback" not in result.stderr
    assert index.requests() == []


@pytest.mark.datasette("ds10")
@pytest.mark.parametrize(
    ("args", "settings", "named"),
    [
        (["subdomain=oakland.ca"], {}, "subdomain:"),
        ([], {"CIVICBAND_INDEX_URL": "file:///etc/passwd"}, "CIVICBAND_INDEX_URL:"),
        # Settings only the shared components read are checked as well, before any request.
        ([], {"CIVICBAND_DB_RETRIES": "x"}, "CIVICBAND_DB_RETRIES:"),
        ([], {"CIVICBAND_BACKOFF_JITTER": "-1"}, "CIVICBAND_BACKOFF_JITTER:"),
    ],
)
def test_bad_input_exits_2_with_one_line(database_url, index, args, settings, named):
    result = crawl(database_url, index, *args, spider="civicband-sites", settings=settings)
    assert result.returncode == 2, result
    (line,) = error_lines(result.stderr)
    assert named in line
    assert "Traceback" not in result.stderr
    assert index.requests() == []
