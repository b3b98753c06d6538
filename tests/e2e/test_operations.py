"""Operating a crawl: live stats over JSON-RPC, progress lines with ETA, the end-of-run summary."""

from __future__ import annotations

import json
import re
import socket
import urllib.error
import urllib.request
from typing import Any

import psycopg
import pytest

from tests.e2e.crawl import SECRET, committed, crawl, jobs, register, start_crawl, wait_for

OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def call(url: str, method: str, params: Any = None, request_id: int = 1) -> dict[str, Any]:
    """One JSON-RPC 2.0 call over HTTP POST."""
    body = {"jsonrpc": "2.0", "method": method, "id": request_id}
    if params is not None:
        body["params"] = params
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with OPENER.open(request, timeout=10) as answer:
        return json.loads(answer.read())


def known_site(database_url, source, **sizes):
    site = source.create_site(**sizes)
    register(database_url, site)
    return site


@pytest.mark.datasette("ds10")
def test_live_stats_and_progress_over_json_rpc_read_only(database_url, source, tmp_path):
    site = known_site(database_url, source, agendas=300, minutes=0)
    source.faults.add(match="/meetings/agendas.json", action="hang", seconds=0.3, times=-1)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    low = taken.getsockname()[1]
    crawler = start_crawl(
        database_url,
        source,
        f"subdomain={site.subdomain}",
        "document_type=agenda",
        "batch_size=20",
        log=tmp_path / "rpc.log",
        settings={"JSONRPC_ENABLED": True, "JSONRPC_PORT": f"{low},{low + 20}"},
    )
    try:
        line = wait_for(
            lambda: re.search(
                r"JSON-RPC: listening on (http://\S+) \(read-only\)", crawler.output()
            ),
            what="the JSON-RPC server",
        )
        url = line.group(1)
        assert url.startswith("http://127.0.0.1:") and url.endswith("/crawler/stats")
        port = int(url.split(":")[2].split("/")[0])
        assert low < port <= low + 20  # the first port of the range was taken
        wait_for(lambda: committed(database_url, site.subdomain) >= 2, what="pages to commit")
        stats = call(url, "get_stats")["result"]
        assert stats["civicband/batches/committed"] >= 2
        assert call(url, "get_value", ["civicband/jobs/started"])["result"] == 1
        (progress,) = call(url, "get_progress")["result"]
        assert progress["subdomain"] == site.subdomain and progress["rows_expected"] == 300
        assert 40 <= progress["rows_done"] < 300
        for method in ("stop", "close_spider", "crawler.engine.close_spider", "set_value"):
            refused = call(url, method, ["finish_reason", "hacked"])
            assert refused["error"]["code"] == -32601, refused
        assert call(url, "get_value", ["finish_reason"]).get("result") is None
        answer = json.dumps(call(url, "get_stats"))
        assert SECRET not in answer
        # pg_stat_activity says which process holds the lease and the page connections.
        with psycopg.connect(database_url) as conn:
            names = {
                name
                for (name,) in conn.execute(
                    "SELECT application_name FROM pg_stat_activity WHERE application_name"
                    " LIKE 'civicband %%'"
                )
            }
        host = f"{socket.gethostname()}:{crawler.process.pid}"
        assert {f"civicband lease {host}", f"civicband pages {host}"} <= names, names
    finally:
        taken.close()
    source.faults.clear()
    assert crawler.wait(timeout=120) == 0, crawler  # nothing asked over JSON-RPC stopped it
    (job,) = jobs(database_url, site.subdomain)
    assert job["status"] == "completed"
    with pytest.raises(urllib.error.URLError):
        call(url, "get_stats")  # closed with the crawl


@pytest.mark.datasette("ds10")
def test_progress_lines_give_rate_and_eta_and_say_when_waiting(database_url, source, tmp_path):
    site = known_site(database_url, source, agendas=200, minutes=0)
    # The first matching rule applies: the rate limit first, then every page is slow.
    source.faults.add(match="_next=", action="ratelimit", retry_after=1, times=1)
    source.faults.add(match="/meetings/agendas.json", action="hang", seconds=0.2, times=-1)
    result = crawl(
        database_url,
        source,
        f"subdomain={site.subdomain}",
        "document_type=agenda",
        "batch_size=20",
        settings={"CIVICBAND_PROGRESS_INTERVAL": 0.3},
    )
    assert result.returncode == 0, result
    lines = result.lines(r"Progress: ")
    head = f"{site.subdomain}/agenda job 1: "
    assert all(head in line for line in lines), lines
    counted = [
        re.search(r": (\d+)/200 rows \((\d+) %\), ([\d.]+) rows/s, ETA (\d+:\d\d:\d\d)", line)
        for line in lines
    ]
    counted = [m for m in counted if m]
    assert len(counted) >= 2, lines
    done = [int(m.group(1)) for m in counted]
    assert done == sorted(done) and done[-1] > done[0]
    assert all(float(m.group(3)) > 0 for m in counted)
    assert any("rate limited: no ETA while waiting" in line for line in lines), lines


@pytest.mark.datasette("ds10")  # the summary is the crawl's own words, whatever the line
def test_the_summary_is_the_last_thing_said_however_the_crawl_ends(database_url, source, tmp_path):
    good = known_site(database_url, source, agendas=20, minutes=5)
    bad = known_site(database_url, source, agendas=20, minutes=0)
    source.faults.add(match=f"/{bad.subdomain}/meetings/agendas", action="status", status=403)
    result = crawl(database_url, source, f"subdomain={good.subdomain},{bad.subdomain},nowhere.zz")
    assert result.returncode == 1, result
    tail = [line for line in result.stderr.splitlines() if line.strip()][-6:]
    assert "Summary (5):" in tail[0], tail
    summary = "\n".join(tail[1:])
    assert f"{good.subdomain}/agenda job" in summary and "completed; created 20" in summary
    assert f"{good.subdomain}/minutes job" in summary and "verification passed" in summary
    assert re.search(
        rf"{re.escape(bad.subdomain)}/agenda job \d+ \(full\): failed; .*error: HTTP 403", summary
    )
    assert "nowhere.zz: not crawled: unknown site" in summary
