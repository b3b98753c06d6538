"""Pytest plugin: civic.band look-alike servers (real Datasette 0.65.5 and 1.0a28) as fixtures."""

from __future__ import annotations

import itertools
import json
import os
import secrets
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.lookalike import data
from tests.lookalike.envs import VERSIONS, ensure_env

SERVER = Path(__file__).with_name("server.py")
IDS = {"0.65.5": "ds065", "1.0a28": "ds10"}
ALIASES = {**{v: v for v in VERSIONS}, **{i: v for v, i in IDS.items()}}
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_names = itertools.count(1)

RowsArg = int | list[dict[str, Any]]


def http(method: str, url: str, body: Any = None, timeout: float = 10) -> Any:
    """Send a JSON control request (no proxies) and return the decoded JSON answer."""
    payload = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=payload, method=method)
    req.add_header("Content-Type", "application/json")
    with _OPENER.open(req, timeout=timeout) as resp:
        return json.loads(resp.read())


class LookalikeServer:
    """One server.py subprocess for one Datasette version."""

    def __init__(self, version: str, root: Path) -> None:
        self.version = version
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.log_path = root.parent / f"{root.name}.log"
        port_file = root.parent / f"{root.name}.port"
        port_file.unlink(missing_ok=True)
        python = ensure_env(version)
        cmd = [str(python), str(SERVER), "--root", str(root), "--port-file", str(port_file)]
        cmd += ["--parent-pid", str(os.getpid())]
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"look-alike {version} exited:\n{self.log_text()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"look-alike {version} not ready in 60 s:\n{self.log_text()}")
            if port_file.exists():
                self.base_url = f"http://127.0.0.1:{int(port_file.read_text())}"
                try:
                    if http("GET", self.base_url + "/_control/health", timeout=2)["ok"]:
                        return
                except (OSError, ValueError):
                    pass
            time.sleep(0.05)

    def log_text(self) -> str:
        """Return the server's output so far."""
        return self.log_path.read_text(errors="replace")[-4000:]

    def control(self, method: str, what: str, body: Any = None) -> Any:
        """Call /_control/<what>."""
        if self.proc.poll() is not None:
            raise RuntimeError(f"look-alike {self.version} died:\n{self.log_text()}")
        return http(method, f"{self.base_url}/_control/{what}", body)

    def stop(self) -> None:
        """Terminate the subprocess (kill if it lingers)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class ServerPool:
    """Session-wide servers, started lazily per version."""

    def __init__(self, tmp: pytest.TempPathFactory) -> None:
        self.tmp = tmp
        self.servers: dict[str, LookalikeServer] = {}

    def get(self, version: str) -> LookalikeServer:
        """Return the running server for a version, starting it on first use."""
        version = ALIASES[version]
        if version not in self.servers:
            root = self.tmp.mktemp(f"lookalike-{IDS[version]}", numbered=True) / "sites"
            self.servers[version] = LookalikeServer(version, root)
        return self.servers[version]

    def stop(self) -> None:
        """Stop every server."""
        for server in self.servers.values():
            server.stop()


class Faults:
    r"""Fault rules on the server, tried in the order added; the first whose regex `match`
    searches `path?raw_query` and whose `times` is not used up (-1: for ever) applies.

    Actions and their options:
      status        answer `status` (500) with JSON `body` ({"ok": false, "error": "injected",
                    "status": N} unless given).
      html          200 text/html bot-wall page.
      ratelimit     civic.band's 402; `retry_after` adds a Retry-After header.
      interrupted   the real Datasette time-limit answer for this line and kind of request.
      hang          `seconds`: wait, then carry on as usual; without it never answer (until
                    the client goes away).
      hold          no answer until the rules are cleared, then carry on as usual: a test
                    holds a process at a request for as long as it needs, with no clock.
      truncate      the site's real answer (straight from Datasette) cut to half its body,
                    200 application/json.
      rewrite_next  the real answer with the JSON body's top-level `next` replaced:
                    `mode="repeat"` → the request's own `_next` (as Datasette decoded it; a
                    page requested without `_next` is left alone), `mode="advance"` → that
                    `_next` with "0" appended (a new token each time), or `value=<token>` /
                    `value=None`. A `next_url` key (0.65, 1.0 `_extra=next_url`) is rewritten
                    to match: null with next, else the URL with `_next` replaced.
      rewrite       the real answer with bytes `old` replaced by `new` (UTF-8; every
                    occurrence, or the first `count`); e.g. old='"text": "' and
                    new=r'"text": "\ud800' (six characters) plant a lone surrogate escape.
    rewrite_next and rewrite keep status and headers, fix Content-Length, and pass the request
    on to the later layers (bot wall, redirect, rate limit) first, rewriting whatever they
    answer; a non-JSON body or one without `next` is sent unchanged. Rules with an unknown
    action or missing options are refused when added (ValueError).
    """

    def __init__(self, server: LookalikeServer) -> None:
        self.server = server

    def add(self, match: str = "", action: str = "status", times: int = 1, **kw: Any) -> None:
        """Add a rule: regex `match` over path?query, `action`, `times` (-1 forever), options."""
        body = {"match": match, "action": action, "times": times, **kw}
        try:
            self.server.control("POST", "faults", body)
        except urllib.error.HTTPError as err:
            raise ValueError(json.loads(err.read())["error"]) from None

    def clear(self) -> None:
        """Drop every rule; requests held by `hold` carry on."""
        self.server.control("DELETE", "faults")

    def list(self) -> list[dict[str, Any]]:
        """Return the rules with their remaining `times`."""
        return self.server.control("GET", "faults")


class Site:
    """One municipality's Datasette site on the look-alike."""

    def __init__(self, source: Source, subdomain: str) -> None:
        self.source = source
        self.subdomain = subdomain
        self.url = f"{source.base_url}/{subdomain}"

    def rows(self, table: str) -> list[dict[str, Any]]:
        """Return what the source holds for a table (rowid order)."""
        return data.read_rows(self.source.root, self.subdomain, table)

    def ids(self, table: str) -> set[str | None]:
        """Return the set of ids in a table."""
        return {r["id"] for r in self.rows(table)}

    def add_rows(self, table: str, rows: list[dict[str, Any]]) -> None:
        """Insert rows verbatim (visible at once to the running server)."""
        data.add_rows(self.source.root, self.subdomain, table, rows)

    def new_rows(self, table: str, n: int, *, seed: str) -> list[dict[str, Any]]:
        """Return `n` generated rows whose ids the table does not hold yet.

        Ids hash (meeting, date, page, text), and 2 % of generated pages are blank, so rows
        from another seed can repeat an id this site already has: skip those.
        """
        have = self.ids(table)
        rows = data.make_rows(table, 2 * n + 10, seed=seed)
        fresh = [row for row in rows if row["id"] not in have][:n]
        assert len(fresh) == n, (table, n, seed)
        return fresh

    def delete_rows(self, table: str, ids: list[str | None]) -> int:
        """Delete rows by id; return how many went."""
        return data.delete_rows(self.source.root, self.subdomain, table, ids)

    def rebuild(
        self,
        agendas: RowsArg = 10,
        minutes: RowsArg = 10,
        *,
        legacy: bool = False,
        seed: Any = None,
        hostile: bool = False,
    ) -> None:
        """Replace both tables (a re-processed site), then drop the server's cached app."""
        seed = f"{self.subdomain}:rebuild:{next(_names)}" if seed is None else seed
        data.write_site(
            self.source.root,
            self.subdomain,
            _rows("agendas", agendas, seed, hostile),
            _rows("minutes", minutes, seed, hostile),
            legacy=legacy,
        )
        self.source.reload()

    def settings(self) -> dict[str, Any]:
        """Return the Datasette settings this site's site.json overrides (data.SITE_SETTINGS)."""
        meta = data.read_meta(self.source.root, self.subdomain)
        return {k: meta[k] for k in data.SITE_SETTINGS if k in meta}

    def configure(self, **settings: int | None) -> None:
        """Override this site's Datasette settings in site.json (None: default); rebuild its app."""
        unknown = set(settings) - set(data.SITE_SETTINGS)
        if unknown:
            raise TypeError(f"unknown site settings {sorted(unknown)}; use {data.SITE_SETTINGS}")
        meta = data.read_meta(self.source.root, self.subdomain)
        meta.update(settings)
        meta = {k: v for k, v in meta.items() if v is not None}
        data.write_meta(self.source.root, self.subdomain, meta)
        self.source.reload(self.subdomain)


def _rows(table: str, rows: RowsArg, seed: Any, hostile: bool = False) -> list[dict[str, Any]]:
    """Generate `rows` rows (hostile ones if asked) if it is an int, else return it."""
    if isinstance(rows, int):
        return data.make_rows(table, rows, seed=seed, hostile=hostile)
    return rows


class Source:
    """Per-test facade over a session look-alike server."""

    def __init__(self, server: LookalikeServer) -> None:
        self.server = server
        self.version = server.version
        self.base_url = server.base_url
        self.site_url = server.base_url + "/{subdomain}"
        self.index_url = server.base_url + "/"
        self.root = server.root
        self.faults = Faults(server)

    def create_site(
        self,
        agendas: RowsArg = 10,
        minutes: RowsArg = 10,
        *,
        subdomain: str | None = None,
        legacy: bool = False,
        meta: dict[str, Any] | None = None,
        settings: dict[str, int] | None = None,
        hostile: bool = False,
    ) -> Site:
        """Write a site (ints: generated rows, hostile if asked; lists: verbatim); return it."""
        subdomain = subdomain or f"t{next(_names)}-{secrets.token_hex(2)}.ca"
        seed = subdomain
        data.write_site(
            self.root,
            subdomain,
            _rows("agendas", agendas, seed, hostile),
            _rows("minutes", minutes, seed, hostile),
            legacy=legacy,
        )
        site = Site(self, subdomain)
        if meta is not None or settings:
            data.write_meta(self.root, subdomain, meta or {})
        if settings:
            site.configure(**settings)
        return site

    def ratelimit(
        self,
        per_minute: int | None = None,
        secret: str | None = None,
        page_cap: bool = False,
        retry_after: int | str | None = None,
    ) -> None:
        """Emulate civic.band's limits on .json paths for callers without the secret."""
        body = {"per_minute": per_minute, "secret": secret, "page_cap": page_cap}
        self.server.control("POST", "ratelimit", {**body, "retry_after": retry_after})

    def requests(self) -> list[dict[str, Any]]:
        """Return every request the server has seen since the last clear."""
        return self.server.control("GET", "requests")

    def clear_requests(self) -> None:
        """Forget the request log."""
        self.server.control("DELETE", "requests")

    def reload(self, subdomain: str | None = None) -> None:
        """Drop one site's (default: every) cached Datasette app; rebuilt on the next request."""
        self.server.control("POST", "reload", {"subdomain": subdomain} if subdomain else None)

    def reset(self) -> None:
        """Clear faults, rate limit and the request log."""
        self.server.control("POST", "reset")


@pytest.fixture(scope="session")
def lookalike_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerPool]:
    """Session-wide look-alike servers, one per Datasette version, started on first use."""
    pool = ServerPool(tmp_path_factory)
    yield pool
    pool.stop()


def _source(pool: ServerPool, version: str) -> Iterator[Source]:
    """Yield a facade, resetting the server's state before and after the test."""
    src = Source(pool.get(version))
    src.reset()
    yield src
    src.reset()


@pytest.fixture
def datasette_server(lookalike_pool: ServerPool) -> Any:
    """Return a function version -> LookalikeServer (the raw session server)."""
    return lookalike_pool.get


@pytest.fixture
def source(request: pytest.FixtureRequest, lookalike_pool: ServerPool) -> Iterator[Source]:
    """The look-alike for each Datasette version (ids ds065, ds10; narrow with a mark)."""
    yield from _source(lookalike_pool, request.param)


@pytest.fixture
def source_ds10(lookalike_pool: ServerPool) -> Iterator[Source]:
    """The look-alike on Datasette 1.0a28 only."""
    yield from _source(lookalike_pool, "1.0a28")


@pytest.fixture
def source_ds065(lookalike_pool: ServerPool) -> Iterator[Source]:
    """The look-alike on Datasette 0.65.5 only."""
    yield from _source(lookalike_pool, "0.65.5")


def pytest_configure(config: pytest.Config) -> None:
    """Register the `datasette` mark."""
    config.addinivalue_line(
        "markers", "datasette(*versions): run the `source` fixture on these versions only"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize `source` over Datasette versions (all, or those named by the mark)."""
    if "source" not in metafunc.fixturenames:
        return
    mark = metafunc.definition.get_closest_marker("datasette")
    versions = [ALIASES[v] for v in mark.args] if mark else list(VERSIONS)
    metafunc.parametrize("source", versions, ids=[IDS[v] for v in versions], indirect=True)
