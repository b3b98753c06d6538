"""A civic.band look-alike: one real Datasette app per site under a router, with fault injection.

Run inside a Datasette environment (see envs.py):
    python server.py --root DIR [--port N] [--port-file F] [--sql-time-limit-ms MS]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import html
import json
import os
import re
import socket
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlencode

import uvicorn
from datasette.app import Datasette
from datasette.version import __version__ as DATASETTE_VERSION

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data import SITE_SETTINGS, count_rows, read_meta  # noqa: E402

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

IS_V1 = not DATASETTE_VERSION.startswith("0.")
SUBDOMAIN_RE = re.compile(r"[a-z0-9-]+(\.[a-z0-9-]+)*")
BOT_WALL = (
    b'<!doctype html><html lang="en"><head><title>Access denied</title></head>'
    b"<body><h1>Access denied</h1><p>Making sure you&#39;re not a bot!</p>"
    b"<p>Protected by Anubis.</p></body></html>"
)
RATE_LIMIT_MESSAGE = "Rate limit exceeded. Maximum {n} requests per minute."
FAULT_ACTIONS = (
    *("status", "html", "ratelimit", "interrupted", "hang", "hold", "truncate"),
    *("rewrite_next", "rewrite"),
)
# Datasette settings every site gets unless its site.json says otherwise (data.SITE_SETTINGS).
DEFAULT_SETTINGS = {"max_returned_rows": 1000, "default_page_size": 100}
# What real Datasette says when a query runs past sql_time_limit_ms (see README.md).
SQL_INTERRUPTED = (
    "<p>SQL query took too long. The time limit is controlled by the\n"
    '<a href="https://docs.datasette.io/en/stable/settings.html#sql-time-limit-ms">'
    "sql_time_limit_ms</a>\nconfiguration option.</p>\n"
    '<textarea style="width: 90%">{sql}</textarea>\n<script>\n'
    'let ta = document.querySelector("textarea");\n'
    'ta.style.height = ta.scrollHeight + "px";\n</script>'
)


def interrupted(path: str, query: str) -> tuple[int, dict[str, Any]]:
    """Return (status, body) of a real Datasette time-limit answer for this request."""
    sql = parse_qs(query).get("sql", [None])[0]
    if sql is None and IS_V1:
        body = {"ok": False, "error": "QueryInterrupted: interrupted", "status": 500, "title": None}
        return 500, body
    if sql is None:
        table = path.rsplit("/", 1)[-1].removesuffix(".json")
        sql = f"select * from {table} order by date desc limit 101"
    escaped = html.escape(sql, quote=False).replace('"', "&#34;").replace("'", "&#39;")
    error = SQL_INTERRUPTED.format(sql=escaped)
    return 400, {"ok": False, "error": error, "status": 400, "title": "SQL Interrupted"}


async def respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: str = "application/json",
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """Send a complete response."""
    hdrs = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": hdrs + (headers or [])})
    await send({"type": "http.response.body", "body": body})


async def respond_json(send: Send, status: int, data: Any, **kw: Any) -> None:
    """Send a JSON response."""
    await respond(send, status, json.dumps(data).encode(), **kw)


async def read_body(receive: Receive) -> bytes:
    """Read a request body."""
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            return body


async def wait_disconnect(receive: Receive) -> None:
    """Return once the client has gone away."""
    while (await receive())["type"] != "http.disconnect":
        pass


def humanize_date(ts: float | str) -> str:
    """Format like Django's "M j, Y" (e.g. Jan 5, 2025)."""
    d = dt.date.fromisoformat(ts[:10]) if isinstance(ts, str) else dt.date.fromtimestamp(ts)
    return f"{d:%b} {d.day}, {d.year}"


class Lookalike:
    """The whole server: control API, faults, bot wall, rate limit, index page, site router."""

    def __init__(
        self, root: Path, port: int, sql_time_limit_ms: int, index_title: str, parent_pid: int
    ) -> None:
        self.root = root
        self.parent_pid = parent_pid
        self.port = port
        self.sql_time_limit_ms = sql_time_limit_ms
        self.index_title = index_title
        self.apps: dict[str, App] = {}
        self.lock = asyncio.Lock()
        self.faults: list[dict[str, Any]] = []
        self.released = asyncio.Event()  # set, then replaced, whenever the rules are cleared
        self.log: list[dict[str, Any]] = []
        self.limit: dict[str, Any] = {}
        self.window: deque[float] = deque()

    # ---- ASGI entry -------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Dispatch one ASGI connection."""
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup" and self.parent_pid:
                    self.watcher = asyncio.create_task(self.watch_parent())
                await send({"type": msg["type"] + ".complete"})
                if msg["type"] == "lifespan.shutdown":
                    return
        if scope["type"] != "http":
            return
        if scope["path"].startswith("/_control/"):
            await self.control(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        query = scope.get("query_string", b"").decode("latin-1")
        entry: dict[str, Any] = {
            "method": scope["method"],
            "path": scope["path"],
            "query": query,
            "headers": headers,
            "status": None,
            "fault": None,
            "forwarded_query": None,
            "time": time.monotonic(),  # same clock as the tests' time.monotonic() (Linux)
            "wall": time.time(),
            "bytes": 0,
            "done": None,
        }
        self.log.append(entry)

        async def logged_send(msg: Message) -> None:
            # Record before handing over: the client can hold the whole body (and ask for the
            # log) before this coroutine runs again.
            if msg["type"] == "http.response.start":
                entry["status"] = msg["status"]
            elif msg["type"] == "http.response.body":
                entry["bytes"] += len(msg.get("body", b""))
                if not msg.get("more_body"):
                    entry["done"] = time.monotonic()
            await send(msg)

        await self.guarded(scope, receive, logged_send, headers, entry)

    async def guarded(
        self, scope: Scope, receive: Receive, send: Send, headers: dict[str, str], entry: dict
    ) -> None:
        """Apply faults, bot wall and rate limit, then serve."""
        target = scope["path"] + "?" + entry["query"]
        rule = next((r for r in self.faults if r["times"] != 0 and r["re"].search(target)), None)
        if rule is not None:
            if rule["times"] > 0:
                rule["times"] -= 1
            entry["fault"] = rule["action"]
            wrapped = await self.apply_fault(rule, scope, receive, send)
            if wrapped is None:
                return
            send = wrapped
        ua = headers.get("user-agent", "")
        if not ua.strip() or "Scrapy" in ua or "Mozilla/" in ua:
            entry["fault"] = entry["fault"] or "botwall"
            await respond(send, 200, BOT_WALL, "text/html; charset=utf-8")
            return
        sub = scope["path"][1:].partition("/")[0]
        if scope["path"] != "/" and not self.exists(sub):
            await self.redirect_home(send)  # civic.band redirects before rate limiting
            return
        if scope["path"].endswith(".json") and not self.trusted(headers):
            if self.rate_limited():
                entry["fault"] = entry["fault"] or "ratelimit"
                await self.send_402(send, self.limit.get("retry_after"))
                return
            if self.limit.get("page_cap"):
                capped = cap_size(entry["query"])
                if capped != entry["query"]:
                    entry["forwarded_query"] = capped
                    scope = dict(scope, query_string=capped.encode("latin-1"))
        await self.serve(scope, receive, send)

    def clear_faults(self) -> None:
        """Drop every rule and let the requests held by `hold` carry on."""
        self.faults.clear()
        self.released.set()
        self.released = asyncio.Event()

    async def watch_parent(self) -> None:
        """Exit when the process that started us is gone (e.g. pytest killed)."""
        while True:
            await asyncio.sleep(1)
            try:
                os.kill(self.parent_pid, 0)
            except ProcessLookupError:
                os._exit(0)

    # ---- faults and access control ------------------------------------------------------------

    async def apply_fault(
        self, rule: dict, scope: Scope, receive: Receive, send: Send
    ) -> Send | None:
        """Carry out a fault; return None once it has answered, else the send to serve through."""
        action = rule["action"]
        if action == "status":
            status = rule.get("status", 500)
            body = rule.get("body", {"ok": False, "error": "injected", "status": status})
            await respond_json(send, status, body)
        elif action == "html":
            await respond(send, 200, BOT_WALL, "text/html; charset=utf-8")
        elif action == "ratelimit":
            await self.send_402(send, rule.get("retry_after"))
        elif action == "interrupted":
            status, body = interrupted(scope["path"], scope.get("query_string", b"").decode())
            await respond_json(send, status, body)
        elif action == "hang":
            if rule.get("seconds") is None:
                await wait_disconnect(receive)
                return None
            await asyncio.sleep(rule["seconds"])
            return send
        elif action == "hold":
            await self.released.wait()
            return send
        elif action == "truncate":
            await self.serve(scope, receive, Truncator(send))
        elif action == "rewrite_next":
            return BodyRewriter(send, lambda body: rewrite_next(body, rule, scope))
        elif action == "rewrite":
            old, new = rule["old"].encode(), rule["new"].encode()
            count = rule.get("count") or -1
            return BodyRewriter(send, lambda body: body.replace(old, new, count))
        else:  # pragma: no cover - check_fault refuses unknown actions
            await respond_json(send, 500, {"error": f"unknown fault action {action!r}"})
        return None

    def trusted(self, headers: dict[str, str]) -> bool:
        """Whether the request carries the configured service secret."""
        secret = self.limit.get("secret")
        return bool(secret) and headers.get("x-service-secret") == secret

    def rate_limited(self) -> bool:
        """Count one request in the sliding window; True if over the limit."""
        per_minute = self.limit.get("per_minute")
        if per_minute is None:
            return False
        now = time.monotonic()
        while self.window and now - self.window[0] >= 60:
            self.window.popleft()
        if len(self.window) >= per_minute:
            return True
        self.window.append(now)
        return False

    async def send_402(self, send: Send, retry_after: Any) -> None:
        """Send civic.band's 402 rate-limit answer."""
        n = self.limit.get("per_minute") or 15
        body = {
            "error": "rate_limit_exceeded",
            "message": RATE_LIMIT_MESSAGE.format(n=n),
            "get_api_key": "https://civic.observer/api-keys",
        }
        if retry_after == "auto":
            retry_after = max(1, int(60 - (time.monotonic() - self.window[0])) + 1)
        extra = [] if retry_after is None else [(b"retry-after", str(retry_after).encode())]
        await respond_json(send, 402, body, headers=extra)

    # ---- sites ----------------------------------------------------------------------------------

    async def serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the index page or route to a site's Datasette."""
        path = scope["path"]
        if path == "/":
            await respond(send, 200, self.index_html(), "text/html; charset=utf-8")
            return
        sub, _, rest = path[1:].partition("/")
        app = await self.site_app(sub)
        if app is None:
            await self.redirect_home(send)
            return
        inner = "/" + rest
        raw = scope.get("raw_path") or path.encode()
        prefix = b"/" + sub.encode()
        raw_inner = raw[len(prefix) :] if raw.startswith(prefix) else inner.encode()
        scope = dict(scope, path=inner, raw_path=raw_inner or b"/")

        async def prefixed_send(msg: Message) -> None:
            # 1.0's "/db.json?sql=" redirect ignores base_url: keep it on this site.
            if msg["type"] == "http.response.start":
                msg = dict(msg, headers=[fix_location(k, v, prefix) for k, v in msg["headers"]])
            await send(msg)

        await app(scope, receive, prefixed_send)

    def exists(self, sub: str) -> bool:
        """Whether a site directory with a meetings.db exists for this subdomain."""
        return bool(SUBDOMAIN_RE.fullmatch(sub)) and (self.root / sub / "meetings.db").is_file()

    async def redirect_home(self, send: Send) -> None:
        """Redirect 302 to the index, as civic.band does for unknown sites."""
        location = f"http://127.0.0.1:{self.port}/".encode()
        await respond(send, 302, b"", "text/plain", headers=[(b"location", location)])

    async def site_app(self, sub: str) -> App | None:
        """Return the site's Datasette app, creating and warming it once."""
        if not self.exists(sub):
            return None
        if sub in self.apps:
            return self.apps[sub]
        async with self.lock:
            if sub not in self.apps:
                self.apps[sub] = await self.make_app(sub)
        return self.apps[sub]

    def site_settings(self, sub: str) -> dict[str, Any]:
        """Return the Datasette settings for a site: defaults overridden by its site.json."""
        meta = read_meta(self.root, sub)
        settings = {**DEFAULT_SETTINGS, "sql_time_limit_ms": self.sql_time_limit_ms}
        settings.update({k: int(meta[k]) for k in SITE_SETTINGS if meta.get(k) is not None})
        return {"base_url": f"/{sub}/", **settings}

    async def make_app(self, sub: str) -> App:
        """Build a Datasette for one site (settings from site.json) and run its startup."""
        tables = {t: {"sort_desc": "date"} for t in ("agendas", "minutes")}
        table_config = {"databases": {"meetings": {"tables": tables}}}
        settings = self.site_settings(sub)
        files = [str(self.root / sub / "meetings.db")]
        if IS_V1:
            ds = Datasette(files, settings=settings, config=table_config)
        else:
            ds = Datasette(files, settings=settings, metadata=table_config)
        await ds.invoke_startup()
        warm = await ds.client.get("/meetings.json")
        if warm.status_code >= 400:
            raise RuntimeError(f"warming {sub} failed: {warm.status_code} {warm.text[:200]}")
        return ds.app()

    def sites(self) -> list[dict[str, Any]]:
        """Describe every site under root for the index page."""
        out = []
        for db in sorted(self.root.glob("*/meetings.db")):
            sub = db.parent.name
            meta = read_meta(self.root, sub)
            head, _, tail = sub.partition(".")
            out.append(
                {
                    "subdomain": sub,
                    "name": meta.get("name", head.replace("-", " ").title()),
                    "state": meta.get("state", tail.upper()),
                    "kind": meta.get("kind", "city"),
                    "pages": count_rows(db, "agendas") + count_rows(db, "minutes"),
                    "last_updated": meta.get("last_updated") or db.stat().st_mtime,
                }
            )
        return sorted(out, key=lambda s: -s["pages"])

    def index_html(self) -> bytes:
        """Render civic.band's home page table of municipalities."""
        sites = self.sites()
        rows = []
        for s in sites:
            sub, name, state = (html.escape(str(s[k])) for k in ("subdomain", "name", "state"))
            rows.append(
                f"""        <tr class="hover:bg-gray-50 transition">
          <td class="px-2 py-2">
            <a href="https://{sub}.civic.band"
               class="text-indigo-600 hover:text-indigo-900 font-medium block"
               data-umami-event="homepage_muni"
               data-umami-event-subdomain="{sub}">
              {name}
              <span class="text-gray-500 sm:hidden">, {state}</span>
            </a>
          </td>
          <td class="px-2 py-2 text-gray-600 hidden sm:table-cell">
            {state}
          </td>
          <td class="px-2 py-2 text-gray-600 capitalize hidden md:table-cell">
            {html.escape(str(s["kind"]))}
          </td>
          <td class="px-2 py-2 text-right text-gray-600 whitespace-nowrap">
            {s["pages"]:,}
          </td>
          <td class="px-2 py-2 text-right text-gray-600 whitespace-nowrap hidden lg:table-cell">
            {humanize_date(s["last_updated"])}
          </td>
        </tr>"""
            )
        th = (
            '<th scope="col" class="px-2 py-2 text-{} text-xs font-medium text-gray-700 uppercase">'
        )
        heads = [("left", "Municipality"), ("left", "State / Province"), ("left", "Type")]
        heads += [("right", "Pages"), ("right", "Last Updated")]
        head_html = "\n".join(f"          {th.format(a)}{t}</th>" for a, t in heads)
        body = "\n".join(rows)
        page = f"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>{html.escape(self.index_title)}</title></head>
<body>
<div class="bg-gray-50 py-4">
  <div class="text-sm text-gray-600">
    Showing <span class="font-semibold">{len(sites)}</span> of
    <span class="font-semibold">{len(sites)}</span> municipalities
  </div>
  <div id="sites-table-container">
  <div class="border border-gray-200 rounded rounded-t bg-white">
    <table class="min-w-full divide-y divide-gray-200 text-sm">
      <thead class="bg-gray-50">
        <tr>
{head_html}
        </tr>
      </thead>
      <tbody class="bg-white divide-y divide-gray-200">
{body}
      </tbody>
    </table>
  </div>
  </div>
</div>
</body>
</html>
"""
        return page.encode()

    # ---- control API ----------------------------------------------------------------------------

    async def control(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle /_control/* requests."""
        method, what = scope["method"], scope["path"][len("/_control/") :].strip("/")
        body = await read_body(receive)
        data = json.loads(body) if body.strip() else {}
        if what == "health":
            await respond_json(send, 200, {"ok": True, "datasette": DATASETTE_VERSION})
        elif what == "faults" and method == "POST":
            rule = {"times": 1, "match": "", **data}
            problem = check_fault(rule)
            if problem:
                await respond_json(send, 400, {"ok": False, "error": problem})
                return
            rule["re"] = re.compile(rule["match"])
            self.faults.append(rule)
            await respond_json(send, 200, {"ok": True})
        elif what == "faults" and method == "DELETE":
            self.clear_faults()
            await respond_json(send, 200, {"ok": True})
        elif what == "faults":
            listed = [{k: v for k, v in r.items() if k != "re"} for r in self.faults]
            await respond_json(send, 200, listed)
        elif what == "ratelimit" and method == "POST":
            self.limit = {k: v for k, v in data.items() if v is not None}
            self.window.clear()
            await respond_json(send, 200, {"ok": True})
        elif what == "requests" and method == "DELETE":
            self.log.clear()
            await respond_json(send, 200, {"ok": True})
        elif what == "requests":
            await respond_json(send, 200, self.log)
        elif what == "reload" and method == "POST":
            async with self.lock:
                if data.get("subdomain"):
                    self.apps.pop(data["subdomain"], None)
                else:
                    self.apps.clear()
            await respond_json(send, 200, {"ok": True})
        elif what == "reset" and method == "POST":
            self.clear_faults()
            self.limit = {}
            self.window.clear()
            self.log.clear()
            await respond_json(send, 200, {"ok": True})
        else:
            await respond_json(send, 404, {"ok": False, "error": f"no control {method} {what}"})


class Truncator:
    """An ASGI send wrapper that buffers the response and sends the first half of its body."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.body = b""

    async def __call__(self, msg: Message) -> None:
        """Collect the response; emit it truncated at the end."""
        if msg["type"] == "http.response.start":
            self.start = msg
            return
        self.body += msg.get("body", b"")
        if msg.get("more_body"):
            return
        cut = self.body[: len(self.body) // 2]
        hdrs = [(b"content-type", b"application/json; charset=utf-8")]
        hdrs.append((b"content-length", str(len(cut)).encode()))
        await self.send({"type": "http.response.start", "status": 200, "headers": hdrs})
        await self.send({"type": "http.response.body", "body": cut})


class BodyRewriter:
    """An ASGI send wrapper that sends `edit(body)` with the real status, headers and length."""

    def __init__(self, send: Send, edit: Callable[[bytes], bytes]) -> None:
        self.send = send
        self.edit = edit
        self.body = b""

    async def __call__(self, msg: Message) -> None:
        """Collect the response; emit the edited body at the end."""
        if msg["type"] == "http.response.start":
            self.start = msg
            return
        if msg["type"] != "http.response.body":
            await self.send(msg)
            return
        self.body += msg.get("body", b"")
        if msg.get("more_body"):
            return
        body = self.edit(self.body)
        drop = (b"content-length", b"transfer-encoding")
        hdrs = [(k, v) for k, v in self.start["headers"] if k.lower() not in drop]
        hdrs.append((b"content-length", str(len(body)).encode()))
        await self.send({**self.start, "headers": hdrs})
        await self.send({"type": "http.response.body", "body": body})


def check_fault(rule: dict[str, Any]) -> str | None:
    """Return why a fault rule is unusable (None if fine), so mistakes fail when added."""
    action = rule.get("action")
    if action not in FAULT_ACTIONS:
        return f"unknown fault action {action!r}; known: {', '.join(FAULT_ACTIONS)}"
    try:
        re.compile(rule["match"])
    except (re.error, TypeError) as exc:
        return f"bad match {rule['match']!r}: {exc}"
    if not isinstance(rule["times"], int):
        return "times must be an integer (-1 for ever)"
    modes = ("repeat", "advance")
    if action == "rewrite_next" and rule.get("mode") not in modes and "value" not in rule:
        return 'rewrite_next needs mode "repeat" or "advance", or a value (a token or null)'
    if action == "rewrite_next" and not isinstance(rule.get("value"), str | None):
        return "rewrite_next value must be a string or null"
    if action == "rewrite":
        if not isinstance(rule.get("old"), str) or not rule["old"]:
            return "rewrite needs old, a non-empty string"
        if not isinstance(rule.get("new"), str):
            return "rewrite needs new, a string"
        try:
            rule["old"].encode(), rule["new"].encode()
        except UnicodeEncodeError:
            return r"rewrite old/new must be UTF-8 text (send a lone surrogate as \ud800, 6 chars)"
        count = rule.get("count")
        if count is not None and (not isinstance(count, int) or count < 1):
            return "rewrite count must be a positive integer (omit it for all occurrences)"
    return None


def rewrite_next(body: bytes, rule: dict[str, Any], scope: Scope) -> bytes:
    """Replace a JSON page's top-level next (and next_url, consistently) as the rule says."""
    try:
        doc = json.loads(body)
    except ValueError:
        return body
    if not isinstance(doc, dict) or "next" not in doc:
        return body
    if rule.get("mode") in ("repeat", "advance"):
        query = scope.get("query_string", b"").decode("latin-1")
        sent = parse_qs(query, keep_blank_values=True).get("_next")
        if not sent:
            return body  # a first page has no token of its own to repeat or extend
        # advance: a token never sent before, as a source that keeps moving on would give
        token = sent[0] + "0" if rule["mode"] == "advance" else sent[0]
    else:
        token = rule["value"]
    doc["next"] = token
    if "next_url" in doc:
        doc["next_url"] = None if token is None else next_url(doc["next_url"], scope, token)
    return json.dumps(doc).encode()


def next_url(base: str | None, scope: Scope, token: str) -> str:
    """Return `base` (else the request URL) with _next=token in place, encoded like Datasette."""
    if base is None:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        query = scope.get("query_string", b"").decode("latin-1")
        base = f"http://{headers.get('host', '127.0.0.1')}{scope['path']}?{query}"
    head, _, query = base.partition("?")
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(k == "_next" for k, _ in pairs):
        pairs = [(k, token if k == "_next" else v) for k, v in pairs]
    else:
        pairs.append(("_next", token))
    return head + "?" + urlencode(pairs)


def fix_location(name: bytes, value: bytes, prefix: bytes) -> tuple[bytes, bytes]:
    """Prefix a site-relative Location header that lacks the site's path."""
    if (
        name.lower() == b"location"
        and value.startswith(b"/")
        and not value.startswith(prefix + b"/")
    ):
        value = prefix + value
    return name, value


def cap_size(query: str) -> str:
    """Cap _size at 100 as civic.band does for callers without the service secret."""
    params = parse_qs(query, keep_blank_values=True)
    size = params.get("_size", [None])[0]
    if size is not None and size.isdigit() and int(size) <= 100:
        return query
    params["_size"] = ["100"]
    return urlencode(params, doseq=True)


def main() -> None:
    """Parse arguments, bind a port and serve."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file", type=Path)
    parser.add_argument("--sql-time-limit-ms", type=int, default=1000)
    parser.add_argument("--index-title", default="Civic Band")
    parser.add_argument("--parent-pid", type=int, default=0, help="exit when this pid is gone")
    args = parser.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    port = sock.getsockname()[1]
    root, limit, title = args.root.resolve(), args.sql_time_limit_ms, args.index_title
    app = Lookalike(root, port, limit, title, args.parent_pid)
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    if args.port_file:
        tmp = args.port_file.with_suffix(".tmp")
        tmp.write_text(str(port))
        tmp.replace(args.port_file)
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()
