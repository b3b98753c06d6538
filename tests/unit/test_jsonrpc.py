"""The JSON-RPC extension on a real loopback port, asked by a real HTTP client (http.client).

No pytest-twisted: the asyncio reactor is installed and its event loop is run only until the
client's thread has its answer (`run_until_complete`), so nothing sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import datetime
import http.client
import logging
import socket
import sys
import types
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from scrapy import signals
from scrapy.crawler import Crawler
from scrapy.exceptions import NotConfigured
from scrapy.settings import Settings
from scrapy.statscollectors import MemoryStatsCollector
from scrapy.utils.reactor import install_reactor, is_asyncio_reactor_installed
from scrapy.utils.test import get_crawler

from civicband.args import ArgumentError
from civicband.config import JsonRpcConfig, parse_port_range, read_jsonrpc
from civicband.db import redact
from civicband.extensions.jsonrpc import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    PROGRESS_KEYS,
    JsonRpc,
    Redactor,
    is_loopback,
)

EXTENSION = "civicband.extensions.jsonrpc.JsonRpc"
MUTATORS = ("set_value", "set_stats", "inc_value", "max_value", "min_value", "clear_stats")
SECRET = 'svc-"s3cr3t"\\token'
PASSWORD = "pa$$:w@rd"
URL = "postgresql://mirror:pa%24%24%3Aw%40rd@db.example:5432/civicband?sslmode=require"
REFUSED = (
    "stop",
    "close",
    "pause",
    "unpause",
    "close_spider",
    "engine.close_spider",
    "crawler.engine.close_spider",
    "crawler.stop",
    "engine.pause",
    *MUTATORS,
    "stats.set_value",
    "get_stats.__globals__",
    "__class__",
    "__init__",
    "_table",
    "call",
    "stats",
    "progress",
    "GET_STATS",
    "",
)


class GuardedStats(MemoryStatsCollector):
    """A stats collector that records every mutator looked up on it once `frozen` is set."""

    frozen = False
    changes: list[str]

    def __init__(self, crawler: Crawler) -> None:
        super().__init__(crawler)
        self.changes = []

    def __getattribute__(self, name: str) -> Any:
        if name in MUTATORS and object.__getattribute__(self, "frozen"):
            object.__getattribute__(self, "changes").append(name)
        return super().__getattribute__(name)


@pytest.fixture(scope="module", autouse=True)
def loop() -> asyncio.AbstractEventLoop:
    """The asyncio reactor's loop (Scrapy's default reactor, the project's), for every test."""
    install_reactor("twisted.internet.asyncioreactor.AsyncioSelectorReactor")
    assert is_asyncio_reactor_installed(), "another test installed a non-asyncio reactor"
    from twisted.internet import reactor  # noqa: PLC0415 (installed just above)

    return reactor._asyncioEventloop  # type: ignore[attr-defined]


def crawler_with(**settings: Any) -> Crawler:
    """A crawler with only this extension (no telnet, memory or log-stats tasks)."""
    return get_crawler(
        settings_dict={
            "EXTENSIONS_BASE": {},
            "EXTENSIONS": {EXTENSION: 500},
            "STATS_CLASS": f"{__name__}.GuardedStats",
            "JSONRPC_ENABLED": True,
            "JSONRPC_PORT": 0,
            **settings,
        }
    )


class Server:
    """A started JsonRpc extension and an HTTP client for it."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, crawler: Crawler, extension: JsonRpc | None = None
    ) -> None:
        self.loop = loop
        self.crawler = crawler
        extension = extension or crawler.get_extension(JsonRpc)
        assert extension is not None
        self.extension = extension
        loop.run_until_complete(crawler.signals.send_catch_log_async(signals.engine_started))
        assert extension.port is not None, "engine_started did not listen"
        self.port: int = extension.port.getHost().port

    def http(
        self, body: bytes = b"", method: str = "POST", path: str = "/crawler/stats"
    ) -> tuple[int, dict[str, str], bytes]:
        """Send one request from a thread while the reactor's loop serves it."""

        def send() -> tuple[int, dict[str, str], bytes]:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                connection.request(method, path, body=body or None)
                response = connection.getresponse()
                return response.status, dict(response.getheaders()), response.read()
            finally:
                connection.close()

        return self.loop.run_until_complete(self.loop.run_in_executor(None, send))

    def raw(self, body: bytes) -> bytes:
        """POST a body; the answer must be 200 with a JSON body."""
        status, headers, answer = self.http(body)
        assert status == 200, (status, answer)
        assert headers["Content-Type"] == "application/json"
        return answer

    def rpc(self, method: str, params: Any = None, id_: Any = 1) -> dict[str, Any]:
        """One JSON-RPC call, as scrapy-jsonrpc's client sends it."""
        request: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "id": id_}
        if params is not None:
            request["params"] = params
        return orjson.loads(self.raw(orjson.dumps(request)))

    def stop(self) -> None:
        """Fire engine_stopped and wait for the port to close."""
        self.loop.run_until_complete(
            self.crawler.signals.send_catch_log_async(signals.engine_stopped)
        )


@pytest.fixture
def serve(loop: asyncio.AbstractEventLoop) -> Iterator[Any]:
    """Start servers for a test; stop them after it."""
    started: list[Server] = []

    def start(crawler: Crawler | None = None, **settings: Any) -> Server:
        server = Server(loop, crawler or crawler_with(**settings))
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def error_code(answer: dict[str, Any]) -> int:
    assert "result" not in answer, answer
    return answer["error"]["code"]


# ---- settings ------------------------------------------------------------------------------


def test_defaults_are_scrapy_jsonrpcs() -> None:
    assert read_jsonrpc(Settings()) == JsonRpcConfig(
        enabled=False, host="127.0.0.1", ports=[6080, 7030]
    )


def test_disabled_by_default_is_not_configured() -> None:
    crawler = get_crawler(settings_dict={"EXTENSIONS_BASE": {}})
    with pytest.raises(NotConfigured, match="JSONRPC_ENABLED is off: set -s JSONRPC_ENABLED=True"):
        JsonRpc.from_crawler(crawler)
    assert crawler_with(JSONRPC_ENABLED="false").get_extension(JsonRpc) is None


def test_not_configured_without_a_reactor() -> None:
    crawler = crawler_with(EXTENSIONS={})
    crawler.settings = Settings({"JSONRPC_ENABLED": True, "TWISTED_REACTOR_ENABLED": False})
    with pytest.raises(NotConfigured, match="needs Twisted's reactor"):
        JsonRpc.from_crawler(crawler)


@pytest.mark.parametrize(
    ("value", "ports"),
    [
        (6080, [6080]),
        ("6080", [6080]),
        ("6080,7030", [6080, 7030]),
        (" 6080 , 7030 ", [6080, 7030]),
        ("[6080, 7030]", [6080, 7030]),
        ([6080, 7030], [6080, 7030]),
        ((6080, 7030), [6080, 7030]),
        (["6080", "7030"], [6080, 7030]),
        ([6080], [6080]),
        (0, [0]),
        ("6080,6080", [6080, 6080]),
    ],
)
def test_port_values_accepted(value: Any, ports: list[int]) -> None:
    assert parse_port_range(value) == ports


@pytest.mark.parametrize(
    "value",
    [
        "abc",
        "",
        "70000",
        "7030,6080",
        "0,10",
        "6080,7030,8000",
        "[6080, 7030",
        "6080-7030",
        "-1",
        [6080, 7030, 8000],
        [],
        [6080.0, 7030],
        True,
        6080.5,
        None,
        "6080\n7030",
    ],
)
def test_bad_port_is_one_line_naming_the_setting(value: Any) -> None:
    with pytest.raises(ArgumentError) as raised:
        parse_port_range(value)
    assert str(raised.value).startswith("JSONRPC_PORT: ")
    assert "\n" not in str(raised.value)


def test_bad_port_stops_the_crawler_naming_the_setting() -> None:
    with pytest.raises(ArgumentError, match=r"^JSONRPC_PORT: .*'many'$"):
        crawler_with(JSONRPC_PORT="many")


@pytest.mark.parametrize(
    ("name", "value"),
    [("JSONRPC_ENABLED", "maybe"), ("JSONRPC_HOST", ""), ("JSONRPC_HOST", 127)],
)
def test_bad_enabled_or_host_is_one_line_naming_it(name: str, value: Any) -> None:
    with pytest.raises(ArgumentError, match=rf"^{name}: ") as raised:
        read_jsonrpc(Settings({"JSONRPC_ENABLED": True, name: value}))
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("localhost", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.0.2.10", False),
        ("example.org", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_non_loopback_host_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="civicband.extensions.jsonrpc"):
        crawler_with(JSONRPC_HOST="0.0.0.0")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "JSONRPC_HOST=0.0.0.0" in warnings[0]
    assert "reachable from other hosts" in warnings[0]


# ---- listening -----------------------------------------------------------------------------


def test_listens_on_loopback_by_default(serve: Any, caplog: pytest.LogCaptureFixture) -> None:
    """No JSONRPC_HOST or JSONRPC_PORT: 127.0.0.1, within scrapy-jsonrpc's 6080-7030."""
    with caplog.at_level(logging.INFO, logger="civicband.extensions.jsonrpc"):
        crawler = get_crawler(
            settings_dict={
                "EXTENSIONS_BASE": {},
                "EXTENSIONS": {EXTENSION: 500},
                "JSONRPC_ENABLED": True,
            }
        )
        server = serve(crawler)
    address = server.extension.port.getHost()
    assert address.host == "127.0.0.1"
    assert 6080 <= address.port <= 7030
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert (
        f"JSON-RPC: listening on http://127.0.0.1:{address.port}/crawler/stats (read-only)"
        in caplog.messages
    )
    assert server.rpc("get_value", ["no/such/stat", 7]) == {"jsonrpc": "2.0", "result": 7, "id": 1}


def taken_port_with_free_next() -> tuple[socket.socket, int]:
    """A port held by a listening socket of ours, whose next port is free."""
    for _ in range(20):
        holder = socket.socket()
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        probe = socket.socket()
        try:
            probe.bind(("127.0.0.1", port + 1))
        except OSError:
            holder.close()
            continue
        finally:
            probe.close()
        return holder, port
    raise AssertionError("no two consecutive free ports on loopback")


def test_port_range_skips_a_taken_port(serve: Any, caplog: pytest.LogCaptureFixture) -> None:
    holder, taken = taken_port_with_free_next()
    try:
        with caplog.at_level(logging.INFO, logger="civicband.extensions.jsonrpc"):
            server = serve(JSONRPC_PORT=f"{taken},{taken + 1}")
        assert server.port == taken + 1
        assert (
            f"JSON-RPC: listening on http://127.0.0.1:{taken + 1}/crawler/stats (read-only)"
            in caplog.messages
        )
        assert server.rpc("get_stats")["result"] == {}
    finally:
        holder.close()


def test_every_port_taken_logs_and_the_crawl_goes_on(
    loop: asyncio.AbstractEventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    holder, taken = taken_port_with_free_next()
    try:
        extension = crawler_with(JSONRPC_PORT=taken).get_extension(JsonRpc)
        assert extension is not None
        with caplog.at_level(logging.ERROR, logger="civicband.extensions.jsonrpc"):
            extension.engine_started()
        assert extension.port is None
        assert any(f"cannot listen on 127.0.0.1 port {taken}" in m for m in caplog.messages)
        loop.run_until_complete(extension.engine_stopped())  # nothing to stop
    finally:
        holder.close()


def test_stopping_closes_the_port(loop: asyncio.AbstractEventLoop) -> None:
    server = Server(loop, crawler_with())
    server.stop()
    assert server.extension.port is None
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", server.port))  # free again


# ---- methods -------------------------------------------------------------------------------


def test_get_stats_and_get_value(serve: Any) -> None:
    server = serve()
    stats = server.crawler.stats
    started = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    stats.set_value("start_time", started)
    stats.set_value("civicband/jobs/completed", 3)
    stats.set_value("elapsed", datetime.timedelta(seconds=90))
    stats.set_value("ratio", 0.25)

    result = server.rpc("get_stats", id_="a")
    assert result["id"] == "a"
    assert result["result"] == {
        "start_time": "2026-01-02T03:04:05+00:00",
        "civicband/jobs/completed": 3,
        "elapsed": 90.0,
        "ratio": 0.25,
    }
    assert datetime.datetime.fromisoformat(result["result"]["start_time"]) == started
    # scrapy-jsonrpc's client sends [] or {} for no arguments
    assert server.rpc("get_stats", [])["result"] == result["result"]
    assert server.rpc("get_stats", {})["result"] == result["result"]

    assert server.rpc("get_value", ["civicband/jobs/completed"])["result"] == 3
    assert server.rpc("get_value", {"key": "start_time"})["result"] == "2026-01-02T03:04:05+00:00"
    assert server.rpc("get_value", ["missing"])["result"] is None
    assert server.rpc("get_value", ["missing", 0])["result"] == 0
    assert server.rpc("get_value", {"key": "missing", "default": "d"})["result"] == "d"


def test_answers_are_live(serve: Any) -> None:
    server = serve()
    assert server.rpc("get_value", ["n"])["result"] is None
    server.crawler.stats.inc_value("n")
    assert server.rpc("get_value", ["n"])["result"] == 1


def injected(loop: asyncio.AbstractEventLoop, progress: Any, **settings: Any) -> Server:
    """A server whose progress provider is the test's (the extension not in EXTENSIONS)."""
    crawler = crawler_with(EXTENSIONS={}, **settings)
    return Server(loop, crawler, JsonRpc.from_crawler(crawler, progress=progress))


def test_get_progress_from_an_injected_provider(loop: asyncio.AbstractEventLoop) -> None:
    jobs = [
        {
            "job_id": 7,
            "subdomain": "oakland.ca",
            "document_type": "agenda",
            "status": "running",
            "state": "fetching",
            "rows_done": 1500,
            "rows_expected": 6000,
            "rate": 12.5,
            "eta_seconds": 360.0,
            "requests_left": None,
            "lease": "not for clients",
        },
        {"job_id": 8, "subdomain": "berkeley.ca", "document_type": "minutes", "eta_seconds": None},
    ]
    server = injected(loop, lambda: jobs)
    try:
        result = server.rpc("get_progress")["result"]
    finally:
        server.stop()
    assert result[0] == {key: jobs[0][key] for key in PROGRESS_KEYS}
    assert result[1] == {
        "job_id": 8,
        "subdomain": "berkeley.ca",
        "document_type": "minutes",
        "status": None,
        "state": None,
        "rows_done": None,
        "rows_expected": None,
        "rate": None,
        "eta_seconds": None,
        "requests_left": None,
    }


def test_get_progress_is_empty_without_the_progress_module(
    serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "civicband.extensions.progress", None)  # import fails
    assert serve().rpc("get_progress")["result"] == []


def fake_progress_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """civicband.extensions.progress as the Progress extension will be: snapshot() per job."""
    module = types.ModuleType("civicband.extensions.progress")

    class Progress:
        @classmethod
        def from_crawler(cls, crawler: Crawler) -> Progress:
            return cls()

        def snapshot(self) -> list[dict[str, Any]]:
            return [{"job_id": 1, "subdomain": "alameda.ca", "rows_done": 10, "eta_seconds": None}]

    Progress.__module__ = module.__name__
    module.Progress = Progress  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, module.__name__, module)


def test_get_progress_asks_the_progress_extension(
    serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_progress_module(monkeypatch)
    server = serve(EXTENSIONS={EXTENSION: 500, "civicband.extensions.progress.Progress": 400})
    [job] = server.rpc("get_progress")["result"]
    assert (job["job_id"], job["subdomain"], job["rows_done"], job["eta_seconds"]) == (
        1,
        "alameda.ca",
        10,
        None,
    )
    # the module is there but the extension is not enabled
    assert serve().rpc("get_progress")["result"] == []


def test_a_failing_provider_is_an_internal_error(
    loop: asyncio.AbstractEventLoop, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> list[dict[str, Any]]:
        raise RuntimeError(f"boom\nwhile sending {SECRET}")

    server = injected(loop, broken, CIVICBAND_SERVICE_SECRET=SECRET)
    try:
        with caplog.at_level(logging.ERROR, logger="civicband.extensions.jsonrpc"):
            answer = server.rpc("get_progress", id_=4)
        assert server.rpc("get_stats")["result"] == {}  # still serving
    finally:
        server.stop()
    assert answer == {
        "jsonrpc": "2.0",
        "error": {"code": INTERNAL_ERROR, "message": "Internal error"},
        "id": 4,
    }
    # logged in one line, without the secret
    assert caplog.messages == [
        "JSON-RPC: get_progress failed: RuntimeError: boom while sending ***"
    ]


# ---- protocol errors, batches, notifications -------------------------------------------------


def call(method: Any = "get_stats", params: Any = ..., id_: Any = 1, **request: Any) -> bytes:
    """A request body, with params only when given."""
    request = {"jsonrpc": "2.0", "method": method, "id": id_, **request}
    if params is not ...:
        request["params"] = params
    return orjson.dumps(request)


@pytest.mark.parametrize(
    ("body", "code", "id_"),
    [
        (b"{not json", PARSE_ERROR, None),
        (b"", PARSE_ERROR, None),
        (b"\xff\xfe", PARSE_ERROR, None),
        (call()[:-1], PARSE_ERROR, None),
        (b"1", INVALID_REQUEST, None),
        (b'"get_stats"', INVALID_REQUEST, None),
        (b"[]", INVALID_REQUEST, None),
        (b'{"method": "get_stats", "id": 1}', INVALID_REQUEST, 1),
        (call(jsonrpc="1.0"), INVALID_REQUEST, 1),
        (call(jsonrpc=2.0), INVALID_REQUEST, 1),
        (b'{"jsonrpc": "2.0", "id": "x"}', INVALID_REQUEST, "x"),
        (call(5), INVALID_REQUEST, 1),
        (call(["get_stats"]), INVALID_REQUEST, 1),
        (call(params="x"), INVALID_REQUEST, 1),
        (call(params=None), INVALID_REQUEST, 1),
        (call(id_={"a": 1}), INVALID_REQUEST, None),
        (call(id_=True), INVALID_REQUEST, None),
        (call("no_such_method"), METHOD_NOT_FOUND, 1),
        (call(params=[1]), INVALID_PARAMS, 1),
        (call(params={"a": 1}, id_=None), INVALID_PARAMS, None),
        (call("get_value"), INVALID_PARAMS, 1),
        (call("get_value", []), INVALID_PARAMS, 1),
        (call("get_value", [1]), INVALID_PARAMS, 1),
        (call("get_value", ["a", 1, 2]), INVALID_PARAMS, 1),
        (call("get_value", {"k": "a"}), INVALID_PARAMS, 1),
        (call("get_value", {"key": "a", "x": 1}), INVALID_PARAMS, 1),
        (call("get_progress", [1], id_=2.5), INVALID_PARAMS, 2.5),
    ],
)
def test_error_codes(serve: Any, body: bytes, code: int, id_: Any) -> None:
    answer = orjson.loads(serve().raw(body))
    assert set(answer) == {"jsonrpc", "error", "id"}
    assert (answer["jsonrpc"], answer["id"], error_code(answer)) == ("2.0", id_, code)
    assert isinstance(answer["error"]["message"], str) and answer["error"]["message"]


def test_batch(serve: Any) -> None:
    server = serve()
    server.crawler.stats.set_value("a", 1)
    batch = [
        {"jsonrpc": "2.0", "method": "get_value", "params": ["a"], "id": 1},
        {"jsonrpc": "2.0", "method": "get_stats", "id": "two"},
        {"jsonrpc": "2.0", "method": "get_value", "params": ["a"]},  # notification
        {"jsonrpc": "2.0", "method": "close_spider"},  # notification, refused silently
        1,
        {"jsonrpc": "2.0", "method": "set_value", "params": ["a", 2], "id": 3},
        {"jsonrpc": "2.0", "method": "get_value", "params": [None], "id": 4},
    ]
    answers = orjson.loads(server.raw(orjson.dumps(batch)))
    assert [answer["id"] for answer in answers] == [1, "two", None, 3, 4]
    assert answers[0]["result"] == 1
    assert answers[1]["result"] == {"a": 1}
    assert error_code(answers[2]) == INVALID_REQUEST
    assert error_code(answers[3]) == METHOD_NOT_FOUND
    assert error_code(answers[4]) == INVALID_PARAMS
    assert server.crawler.stats.get_value("a") == 1


@pytest.mark.parametrize(
    "body",
    [
        {"jsonrpc": "2.0", "method": "get_stats"},
        {"jsonrpc": "2.0", "method": "no_such_method"},
        {"jsonrpc": "2.0", "method": "get_value", "params": []},
        [{"jsonrpc": "2.0", "method": "get_stats"}, {"jsonrpc": "2.0", "method": "stop"}],
    ],
)
def test_notifications_get_no_body(serve: Any, body: Any) -> None:
    status, headers, answer = serve().http(orjson.dumps(body))
    assert (status, answer) == (204, b"")
    assert "Content-Length" not in headers


# ---- HTTP ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/crawler/stats", 405, INVALID_REQUEST),
        ("PUT", "/crawler/stats", 405, INVALID_REQUEST),
        ("DELETE", "/crawler/stats", 405, INVALID_REQUEST),
        ("POST", "/", 404, METHOD_NOT_FOUND),
        ("POST", "/crawler", 404, METHOD_NOT_FOUND),
        ("POST", "/crawler/engine", 404, METHOD_NOT_FOUND),
        ("POST", "/crawler/stats/", 404, METHOD_NOT_FOUND),
        ("POST", "/crawler/stats/set_value", 404, METHOD_NOT_FOUND),
        ("POST", "/crawler/engine/close_spider", 404, METHOD_NOT_FOUND),
        ("GET", "/crawler/engine/close_spider", 404, METHOD_NOT_FOUND),
    ],
)
def test_other_paths_and_verbs_are_http_errors(
    serve: Any, method: str, path: str, status: int, code: int
) -> None:
    server = serve()
    request = b'{"jsonrpc": "2.0", "method": "close_spider", "params": ["x"], "id": 1}'
    got, headers, body = server.http(request, method=method, path=path)
    assert got == status
    assert headers["Content-Type"] == "application/json"
    if status == 405:
        assert headers["Allow"] == "POST"
    answer = orjson.loads(body)
    assert (answer["jsonrpc"], answer["id"], error_code(answer)) == ("2.0", None, code)
    expected = "read-only" if status == 404 else "POST a JSON-RPC 2.0 request to /crawler/stats"
    assert expected in answer["error"]["message"]
    assert server.crawler.stats.changes == []


def test_query_string_is_ignored(serve: Any) -> None:
    answer = serve().http(
        b'{"jsonrpc": "2.0", "method": "get_stats", "id": 1}', path="/crawler/stats?x=1"
    )
    assert answer[0] == 200


def test_oversized_body_is_refused(serve: Any) -> None:
    status, _, body = serve().http(b" " * (2 << 20))
    assert status == 413
    assert error_code(orjson.loads(body)) == INVALID_REQUEST


# ---- read-only -----------------------------------------------------------------------------


@pytest.mark.parametrize("params", [None, [], ["a", 99], {"key": "a", "value": 99}, ["shutdown"]])
def test_nothing_can_change_the_crawl(serve: Any, params: Any) -> None:
    server = serve()
    stats = server.crawler.stats
    stats.set_value("a", 1)
    stats.set_value("finish_reason", None)
    before = dict(stats.get_stats())
    stats.frozen = True
    for method in REFUSED:
        answer = server.rpc(method, params)
        assert error_code(answer) == METHOD_NOT_FOUND, method
        assert "read-only" in answer["error"]["message"]
    # as notifications and in a batch too
    batch = [{"jsonrpc": "2.0", "method": m, "params": params or []} for m in REFUSED]
    assert server.http(orjson.dumps(batch))[0] == 204
    # reading changes nothing either (scrubbing works on a copy)
    server.rpc("get_stats")
    server.rpc("get_value", ["a"])
    assert stats.changes == []
    assert stats.get_stats() == before
    assert server.extension.port is not None  # still serving
    assert server.crawler.crawling is False


def test_the_answer_is_a_copy(serve: Any) -> None:
    server = serve()
    server.crawler.stats.set_value("sites", ["oakland.ca"])
    server.crawler.stats.set_value("start_time", datetime.datetime(2026, 1, 1))
    server.rpc("get_stats")
    assert server.crawler.stats.get_value("sites") == ["oakland.ca"]
    assert server.crawler.stats.get_value("start_time") == datetime.datetime(2026, 1, 1)


# ---- secrets -------------------------------------------------------------------------------


def forms(text: str) -> list[bytes]:
    """How a secret could show in a JSON body: as is, or JSON-escaped."""
    return [text.encode(), orjson.dumps(text)[1:-1]]


def assert_clean(body: bytes) -> None:
    for secret in (SECRET, PASSWORD, "pa%24%24%3Aw%40rd"):
        for form in forms(secret):
            assert form not in body, (form, body)
    orjson.loads(body)  # still JSON


def test_no_answer_holds_the_secret_or_the_password(serve: Any) -> None:
    server = serve(CIVICBAND_SERVICE_SECRET=SECRET, CIVICBAND_DATABASE_URL=URL)
    stats = server.crawler.stats
    stats.set_value("leak/secret", f"sent X-Service-Secret: {SECRET}")
    stats.set_value("leak/url", f"connecting to {URL}")
    stats.set_value("leak/password", f"password={PASSWORD}")
    stats.set_value(f"leak/key/{SECRET}", 1)
    stats.set_value(
        "leak/nested", {"deep": [SECRET, {PASSWORD: (PASSWORD,)}], "b": SECRET.encode()}
    )
    stats.set_value("fine", "nothing to hide")

    answers = [
        server.raw(orjson.dumps({"jsonrpc": "2.0", "method": "get_stats", "id": 1})),
        server.raw(
            orjson.dumps({"jsonrpc": "2.0", "method": "get_value", "params": ["leak/url"], "id": 2})
        ),
        # a default or an id the client sends is not echoed with the secret either
        server.raw(
            orjson.dumps(
                {"jsonrpc": "2.0", "method": "get_value", "params": ["x", SECRET], "id": SECRET}
            )
        ),
        server.raw(orjson.dumps({"jsonrpc": "2.0", "method": SECRET, "id": 3})),
        server.raw(
            orjson.dumps(
                [{"jsonrpc": "2.0", "method": "get_value", "params": ["leak/secret"], "id": 4}]
            )
        ),
    ]
    for body in answers:
        assert_clean(body)
    result = orjson.loads(answers[0])["result"]
    assert result["leak/secret"] == "sent X-Service-Secret: ***"
    assert result["leak/url"] == f"connecting to {redact(URL)}"
    assert result["leak/password"] == "password=***"
    assert result["leak/key/***"] == 1
    assert result["leak/nested"] == {"deep": ["***", {"***": ["***"]}], "b": "***"}
    assert result["fine"] == "nothing to hide"
    assert orjson.loads(answers[2])["result"] == "***"


def test_a_numeric_secret_is_not_sent_as_a_number(serve: Any) -> None:
    server = serve(CIVICBAND_SERVICE_SECRET="918273645")
    server.crawler.stats.set_value("n", 918273645)
    server.crawler.stats.set_value("m", 42)
    body = server.raw(b'{"jsonrpc": "2.0", "method": "get_stats", "id": 1}')
    assert b"918273645" not in body
    assert orjson.loads(body)["result"] == {"n": "***", "m": 42}


def test_key_value_database_password_is_hidden(serve: Any) -> None:
    server = serve(CIVICBAND_DATABASE_URL="host=db user=u password='s p@ce' dbname=x")
    server.crawler.stats.set_value("err", "could not connect: password 's p@ce' refused, s p@ce")
    body = server.raw(b'{"jsonrpc": "2.0", "method": "get_value", "params": ["err"], "id": 1}')
    assert b"s p@ce" not in body
    assert orjson.loads(body)["result"] == "could not connect: password *** refused, ***"


def test_a_secret_spanning_json_syntax_is_cut_from_the_bytes() -> None:
    redactor = Redactor(['k1":"ab'])
    body = redactor.dumps({"result": {"k1": "ab"}})
    assert b'k1":"ab' not in body
    assert body == b'{"result":{"***"}}'
