"""The change feed: versions, tombstones, `scrapy changes` and NOTIFY against real crawls.

Every change a crawl makes to a page shows up once in the feed with the right op; nothing else
does; removed pages come back from their tombstones without their text being fetched; a reader
polling while two processes write never skips a version; old tombstones are purged.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from civicband import db
from tests.e2e.crawl import (
    ROOT,
    assert_mirror_equals_source,
    crawl,
    execute,
    fetch,
    is_by_id,
    jobs,
    register,
    sql_of,
    sql_requests,
    start_crawl,
)


def changes(database_url: str, *options: str) -> list[dict[str, Any]]:
    """`scrapy changes` run for real, its JSON lines read back."""
    done = subprocess.run(
        [sys.executable, "-m", "scrapy", "changes", *options],
        cwd=ROOT,
        env={**os.environ, "CIVICBAND_DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def top_version(database_url: str) -> int:
    """The highest version any page or tombstone holds."""
    row = fetch(
        database_url,
        "SELECT greatest((SELECT max(version) FROM meeting_pages),"
        " (SELECT max(version) FROM page_tombstones)) AS v",
    )[0]
    return int(row["v"] or 0)


def assert_ascending_once(feed: list[dict[str, Any]]) -> None:
    """Versions strictly ascend, and no page appears twice."""
    versions = [line["version"] for line in feed]
    assert versions == sorted(set(versions)), versions[:20]
    keys = [(line["subdomain"], line["document_type"], line["id"]) for line in feed]
    assert len(keys) == len(set(keys))


def by_op(feed: list[dict[str, Any]], op: str, document_type: str = "agenda") -> dict[str, Any]:
    return {x["id"]: x for x in feed if x["op"] == op and x["document_type"] == document_type}


def change_in_place(site, table: str, ids: list[str], **values) -> None:
    """Re-extraction at the source: the same ids, new values in columns the id does not hash."""
    rows = {row["id"]: row for row in site.rows(table)}
    site.delete_rows(table, ids)
    site.add_rows(table, [{**rows[i], **values} for i in ids])


def test_the_feed_holds_every_change_once_and_brings_removed_pages_back(database_url, source):
    site = source.create_site(agendas=300, minutes=80)
    register(database_url, site)
    full = crawl(database_url, source, f"subdomain={site.subdomain}")
    assert full.returncode == 0, full

    # A full crawl's feed: every page once, as an upsert that matches the mirror.
    everything = changes(database_url, "--since", "0")
    assert_ascending_once(everything)
    assert {x["op"] for x in everything} == {"upsert"}
    assert {x["id"] for x in everything if x["document_type"] == "agenda"} == site.ids("agendas")
    assert {x["id"] for x in everything if x["document_type"] == "minutes"} == site.ids("minutes")
    source_row = {r["id"]: r for r in site.rows("agendas")}
    for line in by_op(everything, "upsert").values():
        want = source_row[line["id"]]
        got = {k: line[k] for k in ("meeting", "date", "page", "text", "entities_json")}
        assert got == {k: want[k] for k in ("meeting", "date", "page", "text", "entities_json")}
        assert line["first_seen"] == line["changed"]
    first_seen = {x["id"]: x["first_seen"] for x in everything}
    # A reader that stops early (`| head -n 1`): the command stops quietly, status 0.
    assert len("\n".join(json.dumps(x) for x in everything)) > 128 * 1024, "past a pipe buffer"
    with subprocess.Popen(
        [sys.executable, "-m", "scrapy", "changes", "--since", "0"],
        cwd=ROOT,
        env={**os.environ, "CIVICBAND_DATABASE_URL": database_url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as head:
        assert json.loads(head.stdout.readline()) == everything[0]
        head.stdout.close()
        assert head.wait(timeout=60) == 0
        assert head.stderr.read() == b""
    assert full.stats["civicband/changes/created"] == len(everything)

    # Fetching again what did not change takes no version and prints nothing.
    settled = top_version(database_url)
    again = crawl(database_url, source, f"subdomain={site.subdomain}", "full=true")
    assert again.returncode == 0, again
    assert changes(database_url, "--since", str(settled)) == []
    assert top_version(database_url) == settled
    assert not any(k.startswith("civicband/changes/") for k in again.stats), again.stats

    # Removed, added and re-extracted at the source: a catch-up's feed holds exactly those.
    ids = sorted(site.ids("agendas"))
    removed_ids, changed_ids = ids[:10], ids[100:105]
    removed_rows = [source_row[i] for i in removed_ids]
    site.delete_rows("agendas", removed_ids)
    added = site.new_rows("agendas", 12, seed="feed")
    site.add_rows("agendas", added)
    change_in_place(site, "agendas", changed_ids, entities_json='{"persons": ["Re-extracted"]}')
    with psycopg.connect(database_url, autocommit=True) as listener:
        heard: list[str] = []
        listener.add_notify_handler(lambda n: heard.append(n.payload))
        listener.execute("LISTEN civicband_changes")
        catch_up = crawl(database_url, source, f"subdomain={site.subdomain}")
        assert catch_up.returncode == 0, catch_up
        listener.execute("SELECT 1")  # notifications that arrived meanwhile are handled by now
    feed = changes(database_url, "--since", str(settled))
    assert_ascending_once(feed)
    assert by_op(feed, "delete").keys() == set(removed_ids)
    upserts = by_op(feed, "upsert")
    assert upserts.keys() == {r["id"] for r in added} | set(changed_ids)
    assert len(feed) == 27, feed
    for i in changed_ids:
        assert upserts[i]["entities_json"] == '{"persons": ["Re-extracted"]}'
        assert upserts[i]["first_seen"] == first_seen[i] != upserts[i]["changed"]
    assert heard and max(int(v) for v in heard) == feed[-1]["version"], heard
    job = jobs(database_url, site.subdomain)[-2]
    assert job["document_type"] == "agenda"
    counted = (job["pages_created"], job["pages_changed"], job["pages_removed"])
    assert counted == (12, 5, 10), job
    assert job["pages_restored"] == 0
    stats = catch_up.stats
    assert stats["civicband/changes/created"] == 12
    assert stats["civicband/changes/changed"] == 5
    assert stats["civicband/changes/removed"] == 10
    tombstones = fetch(database_url, "SELECT id, text, created FROM page_tombstones")
    assert {t["id"]: t["text"] for t in tombstones} == {r["id"]: r["text"] for r in removed_rows}

    # The removed pages come back (two re-extracted meanwhile): restored from their tombstones
    # with their first-seen time, only the columns outside the id hash fetched.
    before = top_version(database_url)
    back = [
        {**row, "votes_json": '{"tally": {"ayes": 6, "nays": 1}}'} if n < 2 else row
        for n, row in enumerate(removed_rows)
    ]
    site.add_rows("agendas", back)
    source.clear_requests()
    restore = crawl(database_url, source, f"subdomain={site.subdomain}")
    assert restore.returncode == 0, restore
    assert_mirror_equals_source(database_url, site)
    feed = changes(database_url, "--since", str(before), "--type", "agenda")
    assert_ascending_once(feed)
    assert {x["op"] for x in feed} == {"upsert"}
    assert {x["id"] for x in feed} == set(removed_ids)
    for line in feed:
        assert line["first_seen"] == first_seen[line["id"]], line
    assert by_op(feed, "upsert")[back[0]["id"]]["votes_json"] == back[0]["votes_json"]
    assert fetch(database_url, "SELECT count(*) AS n FROM page_tombstones")[0]["n"] == 0
    by_id = [r for r in sql_requests(source, site.subdomain) if is_by_id(r)]
    assert by_id, "the restored pages' columns were fetched by id"
    for request in by_id:
        asked = sql_of(request)
        # Values only (meeting, date and page too, to see a moved text), never the text.
        assert "agenda_v=" in request["query"] and "agenda_w=" not in request["query"], asked
        assert ",text," not in asked and "*" not in asked, asked
    job = jobs(database_url, site.subdomain)[-2]
    assert (job["pages_created"], job["pages_changed"], job["pages_restored"]) == (0, 0, 10), job
    assert restore.stats["civicband/changes/restored"] == 10
    assert any("restored 10," in line for line in restore.lines(r"job \d+ \(catchup\)")), restore


@pytest.mark.datasette("ds10")
def test_a_full_pass_restores_and_old_tombstones_are_purged_and_said(database_url, source):
    site = source.create_site(agendas=120, minutes=0)
    register(database_url, site)
    assert crawl(database_url, source, f"subdomain={site.subdomain}").returncode == 0
    gone = sorted(site.ids("agendas"))[:8]
    first_seen_sql = "SELECT id, created FROM meeting_pages WHERE id = ANY(%s) ORDER BY id"
    seen = fetch(database_url, first_seen_sql, [gone[:2]])
    rows = {row["id"]: row for row in site.rows("agendas")}
    site.delete_rows("agendas", gone)
    kept = crawl(database_url, source, f"subdomain={site.subdomain}")
    assert kept.returncode == 0, kept
    assert kept.stats["civicband/tombstones/purged"] == 0
    assert not kept.lines(r"tombstones: purged"), "nothing purged, nothing said"
    # Two come back and a full pass brings them whole: restored, their first-seen time kept.
    site.add_rows("agendas", [rows[i] for i in gone[:2]])
    full = crawl(database_url, source, f"subdomain={site.subdomain}", "full=true")
    assert full.returncode == 0, full
    assert fetch(database_url, first_seen_sql, [gone[:2]]) == seen
    job = [j for j in jobs(database_url, site.subdomain) if j["document_type"] == "agenda"][-1]
    assert (job["mode"], job["pages_restored"], job["pages_created"]) == ("full", 2, 0), job
    assert full.stats["civicband/changes/restored"] == 2
    # Three of the others removed 31 days ago: past the default retention of 30 days.
    backdated = execute(
        database_url,
        "UPDATE page_tombstones SET removed = removed - interval '31 days' WHERE id = ANY(%s)",
        [gone[2:5]],
    )
    assert backdated == 3
    purged = crawl(database_url, source, f"subdomain={site.subdomain}")
    assert purged.returncode == 0, purged
    assert purged.stats["civicband/tombstones/purged"] == 3
    assert purged.lines(r"tombstones: purged 3 removed more than 30 days ago"), purged
    left = {x["id"] for x in changes(database_url, "--since", "0") if x["op"] == "delete"}
    assert left == set(gone[5:])
    # CIVICBAND_TOMBSTONE_DAYS=0 keeps none.
    none_kept = crawl(
        database_url,
        source,
        f"subdomain={site.subdomain}",
        settings={"CIVICBAND_TOMBSTONE_DAYS": 0},
    )
    assert none_kept.returncode == 0, none_kept
    assert none_kept.stats["civicband/tombstones/purged"] == 3
    assert fetch(database_url, "SELECT count(*) AS n FROM page_tombstones")[0]["n"] == 0


class Reader(threading.Thread):
    """A consumer polling the feed as documented: ask since the last version read, remember it."""

    def __init__(self, database_url: str) -> None:
        super().__init__(daemon=True)
        self.database_url = database_url
        self.last = 0
        self.read: list[int] = []
        self.polls = 0
        self.done = threading.Event()
        self.error: BaseException | None = None

    def poll(self, conn: psycopg.Connection) -> None:
        params = {"since": self.last, "subdomain": None, "document_type": None, "limit": 500}
        rows = conn.cursor(row_factory=dict_row).execute(db.query("changes"), params).fetchall()
        self.polls += 1
        self.read += [row["version"] for row in rows]
        if rows:
            self.last = rows[-1]["version"]

    def run(self) -> None:
        try:
            with psycopg.connect(self.database_url, autocommit=True) as conn:
                while not self.done.wait(0.01):  # a polling pace, not a synchronisation
                    self.poll(conn)
                while self.poll_more(conn):  # what the last commits left, to the end
                    pass
        except BaseException as error:  # noqa: BLE001 - reported by the test
            self.error = error

    def poll_more(self, conn: psycopg.Connection) -> bool:
        before = len(self.read)
        self.poll(conn)
        return len(self.read) > before


@pytest.mark.datasette("ds10")
def test_a_reader_polling_while_two_processes_write_never_skips_a_version(
    database_url, source, tmp_path
):
    sites = [source.create_site(agendas=1500, minutes=300) for _ in range(2)]
    register(database_url, *sites)
    reader = Reader(database_url)
    reader.start()
    crawls = [
        start_crawl(
            database_url,
            source,
            f"subdomain={site.subdomain}",
            "batch_size=25",
            log=tmp_path / f"crawl{n}.log",
        )
        for n, site in enumerate(sites)
    ]
    for process in crawls:
        assert process.wait(timeout=300) == 0, process
    reader.done.set()
    reader.join(timeout=120)
    assert reader.error is None, reader.error
    assert reader.polls > 10, "the reader must poll while the crawls write"
    final = [x["version"] for x in changes(database_url, "--since", "0")]
    assert len(final) == 2 * 1800
    assert len(reader.read) == len(set(reader.read)), "a change was read twice"
    assert sorted(reader.read) == final, (
        f"{len(set(final) - set(reader.read))} versions never read",
    )
