"""Live crawl stats over JSON-RPC 2.0, read-only, in scrapy-jsonrpc's protocol and settings.

scrapy-jsonrpc 0.3.0 does not import on Scrapy 2.x / Python 3 (SPEC §4), so the project serves
its protocol itself: `JSONRPC_ENABLED`, `JSONRPC_HOST` (127.0.0.1), `JSONRPC_PORT` (a port or a
[low, high] range, tried in order like the telnet console's), and JSON-RPC 2.0 over HTTP POST on
`/crawler/stats`.

Unlike scrapy-jsonrpc, which called any attribute of the stats collector or the engine a client
named, the methods are a fixed table of three readers (`get_stats`, `get_value`, `get_progress`):
nothing a client sends can stop, pause or change the crawl. The crawl holds the database URL and
the service secret, so every answer is scrubbed of both before it is sent.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Iterable, Mapping
from datetime import date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any, Self

import orjson
from scrapy import signals
from scrapy.exceptions import NotConfigured
from scrapy.settings import BaseSettings
from scrapy.utils.defer import maybe_deferred_to_future
from scrapy.utils.reactor import listen_tcp
from twisted.internet.error import CannotListenError

from civicband.config import JsonRpcConfig, read_jsonrpc
from civicband.db import passwords

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from scrapy.statscollectors import StatsCollector
    from twisted.internet.tcp import Port

logger = logging.getLogger(__name__)

PATH = b"/crawler/stats"
# A request is a few hundred bytes; this bounds what one client can make the crawl hold.
MAX_BODY = 1 << 20
# Sessions are one request long; a client that connects and says nothing is dropped.
IDLE_TIMEOUT = 30

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603

METHODS = ("get_stats", "get_value", "get_progress")
READ_ONLY = (
    f"Method not found: this JSON-RPC interface is read-only; it serves only {', '.join(METHODS)}"
)
PROGRESS_KEYS = (
    "job_id",
    "subdomain",
    "document_type",
    "status",
    "state",
    "rows_done",
    "rows_expected",
    "rate",
    "eta_seconds",
    "requests_left",
)
REDACTED = "***"
MAX_DEPTH = 32

ProgressProvider = Callable[[], Iterable[Mapping[str, Any]]]


class RpcError(Exception):
    """A JSON-RPC error to answer with: its code and message are the client's to see."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# ---- where it listens ----------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach an address (what JSONRPC_HOST should be)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip())
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


# ---- what an answer may not contain --------------------------------------------------------


class Redactor:
    """Replace the service secret and the database password with *** in whatever is sent."""

    def __init__(self, secrets: Iterable[str]) -> None:
        # Longest first, so that a secret holding another is replaced whole.
        self.secrets = sorted({text for text in secrets if text}, key=len, reverse=True)
        # In JSON a secret holding quotes, backslashes or control characters is escaped.
        escaped = {orjson.dumps(text)[1:-1] for text in self.secrets}
        self.encoded = sorted(escaped | {text.encode() for text in self.secrets}, key=len)[::-1]

    @classmethod
    def from_settings(cls, settings: BaseSettings) -> Self:
        """The secrets this crawl holds: CIVICBAND_SERVICE_SECRET and the database password."""
        secret = str(settings.get("CIVICBAND_SERVICE_SECRET") or "")
        url = str(settings.get("CIVICBAND_DATABASE_URL") or "")
        return cls([secret, *passwords(url)])

    def text(self, value: str) -> str:
        """A string with every secret in it replaced."""
        for secret in self.secrets:
            value = value.replace(secret, REDACTED)
        return value

    def clean(self, value: Any, depth: int = 0) -> Any:
        """A JSON-ready copy of a value: str keys, ISO 8601 datetimes, secrets replaced."""
        if depth > MAX_DEPTH:
            return "..."
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, int | float):
            return REDACTED if self.text(repr(value)) != repr(value) else value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, datetime | date | time):
            return self.text(value.isoformat())
        if isinstance(value, timedelta):
            return value.total_seconds()
        if isinstance(value, bytes):
            return self.text(value.decode("utf-8", "replace"))
        if isinstance(value, Mapping):
            return {self.clean_key(key): self.clean(item, depth + 1) for key, item in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [self.clean(item, depth + 1) for item in value]
        return self.text(str(value))

    def clean_key(self, key: Any) -> str:
        """An object key as JSON allows it, secrets replaced."""
        return self.text(key if isinstance(key, str) else str(self.clean(key)))

    def dumps(self, value: Any) -> bytes:
        """Serialise an answer; a secret that spans JSON syntax is still cut out of the bytes."""
        body = orjson.dumps(self.clean(value))
        for secret in self.encoded:
            body = body.replace(secret, REDACTED.encode())
        return body


# ---- what the methods read -----------------------------------------------------------------


class ExtensionProgress:
    """Per-job progress from the Progress extension, looked up per call: it may not be there."""

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler

    def __call__(self) -> list[Mapping[str, Any]]:
        """The extension's snapshot(), or [] when the module or the extension is absent."""
        try:
            # Imported per call: the module is another extension's, which may not exist yet.
            from civicband.extensions.progress import Progress  # noqa: PLC0415
        except ImportError:
            return []
        try:
            extension = self.crawler.get_extension(Progress)
        except RuntimeError:  # the extension manager is not built yet
            return []
        return [] if extension is None else list(extension.snapshot())


class StatsMethods:
    """The three readers a client may call, from a fixed table: no name is looked up as code."""

    def __init__(self, stats: StatsCollector, progress: ProgressProvider) -> None:
        self.stats = stats
        self.progress = progress
        self._table: dict[str, Callable[[Any], Any]] = {
            "get_stats": self.get_stats,
            "get_value": self.get_value,
            "get_progress": self.get_progress,
        }

    def call(self, method: str, params: Any) -> Any:
        """Answer one call; anything but the readers is refused, so nothing can change."""
        handler = self._table.get(method)
        if handler is None:
            raise RpcError(METHOD_NOT_FOUND, READ_ONLY)
        return handler(params)

    def get_stats(self, params: Any) -> dict[str, Any]:
        """Every stat, as a copy the answer cannot change."""
        _no_params("get_stats", params)
        return dict(self.stats.get_stats())

    def get_value(self, params: Any) -> Any:
        """One stat, like StatsCollector.get_value(key, default=None)."""
        usage = 'get_value takes [key], [key, default], {"key": key} or {"key": key, "default": d}'
        if isinstance(params, list) and 1 <= len(params) <= 2:
            key, default = params[0], params[1] if len(params) == 2 else None
        elif isinstance(params, dict) and "key" in params and set(params) <= {"key", "default"}:
            key, default = params["key"], params.get("default")
        else:
            raise RpcError(INVALID_PARAMS, f"Invalid params: {usage}")
        if not isinstance(key, str):
            raise RpcError(INVALID_PARAMS, "Invalid params: get_value's key must be a string")
        return self.stats.get_value(key, default)

    def get_progress(self, params: Any) -> list[dict[str, Any]]:
        """Each running job's progress: PROGRESS_KEYS only, a missing one as null."""
        _no_params("get_progress", params)
        return [{key: job.get(key) for key in PROGRESS_KEYS} for job in self.progress()]


def _no_params(method: str, params: Any) -> None:
    """Refuse params for a method that takes none (scrapy-jsonrpc's client sends [] or {})."""
    if params not in (None, [], {}):
        raise RpcError(INVALID_PARAMS, f"Invalid params: {method} takes no params")


# ---- the protocol --------------------------------------------------------------------------


def describe(error: BaseException) -> str:
    """An exception as one log line: its type and message."""
    return " ".join(f"{type(error).__name__}: {error}".split())


def error_answer(id_: Any, code: int, message: str) -> dict[str, Any]:
    """A JSON-RPC 2.0 error response."""
    return {"jsonrpc": "2.0", "error": {"code": code, "message": message}, "id": id_}


def _valid_id(value: Any) -> bool:
    return value is None or (isinstance(value, str | int | float) and not isinstance(value, bool))


class Dispatcher:
    """JSON-RPC 2.0 framing: parse, validate, batch, notifications and error codes."""

    def __init__(self, methods: StatsMethods, redactor: Redactor) -> None:
        self.methods = methods
        self.redactor = redactor

    def handle(self, body: bytes) -> Any:
        """The answer to a request body, or None when nothing must be answered (notifications)."""
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError:
            return error_answer(None, PARSE_ERROR, "Parse error: the body is not JSON")
        if not isinstance(request, list):
            return self.one(request)
        if not request:
            return error_answer(None, INVALID_REQUEST, "Invalid Request: empty batch")
        answers = [answer for answer in map(self.one, request) if answer is not None]
        return answers or None

    def one(self, request: Any) -> dict[str, Any] | None:
        """Answer one request object; a valid notification gets nothing back."""
        if not isinstance(request, dict):
            return error_answer(None, INVALID_REQUEST, "Invalid Request: expected an object")
        id_ = request.get("id")
        if not _valid_id(id_):
            return error_answer(
                None, INVALID_REQUEST, "Invalid Request: id must be a string, a number or null"
            )
        if request.get("jsonrpc") != "2.0":
            return error_answer(id_, INVALID_REQUEST, 'Invalid Request: jsonrpc must be "2.0"')
        method, params = request.get("method"), request.get("params")
        if not isinstance(method, str):
            return error_answer(id_, INVALID_REQUEST, "Invalid Request: method must be a string")
        if "params" in request and not isinstance(params, list | dict):
            return error_answer(
                id_, INVALID_REQUEST, "Invalid Request: params must be an array or an object"
            )
        try:
            answer = {"jsonrpc": "2.0", "result": self.methods.call(method, params), "id": id_}
        except RpcError as error:
            answer = error_answer(id_, error.code, error.message)
        except Exception as error:
            # One scrubbed line: a provider's message may hold what the log must not show.
            name = method if method in METHODS else "a call"
            logger.error("JSON-RPC: %s failed: %s", name, self.redactor.text(describe(error)))
            answer = error_answer(id_, INTERNAL_ERROR, "Internal error")
        return answer if "id" in request else None


# ---- the extension -------------------------------------------------------------------------


def url_for(host: str, port: int) -> str:
    """The endpoint's URL, for the log."""
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}{PATH.decode()}"


class JsonRpc:
    """Serve live stats and per-job progress over JSON-RPC while the engine runs (SPEC §4)."""

    def __init__(
        self, crawler: Crawler, config: JsonRpcConfig, progress: ProgressProvider | None = None
    ) -> None:
        self.crawler = crawler
        self.config = config
        self.redactor = Redactor.from_settings(crawler.settings)
        self.methods = StatsMethods(crawler.stats, progress or ExtensionProgress(crawler))
        self.port: Port | None = None

    @classmethod
    def from_crawler(cls, crawler: Crawler, progress: ProgressProvider | None = None) -> Self:
        """Check the settings and listen from engine start to engine stop."""
        config = read_jsonrpc(crawler.settings)
        if not config.enabled:
            raise NotConfigured(
                "JSONRPC_ENABLED is off: set -s JSONRPC_ENABLED=True to serve live stats"
            )
        if not crawler.settings.getbool("TWISTED_REACTOR_ENABLED", True):
            raise NotConfigured(
                "JSON-RPC needs Twisted's reactor, and TWISTED_REACTOR_ENABLED is off"
            )
        if not is_loopback(config.host):
            logger.warning(
                "JSON-RPC: JSONRPC_HOST=%s is not a loopback address: live stats are reachable"
                " from other hosts, without authentication",
                config.host,
            )
        extension = cls(crawler, config, progress)
        crawler.signals.connect(extension.engine_started, signal=signals.engine_started)
        crawler.signals.connect(extension.engine_stopped, signal=signals.engine_stopped)
        return extension

    def engine_started(self) -> None:
        """Listen on the first free port of JSONRPC_PORT; without one the crawl goes on."""
        # twisted.web is imported only when JSON-RPC is on: a crawl without it starts sooner.
        from civicband.extensions.jsonrpc_http import QuietSite, StatsResource

        resource = StatsResource(Dispatcher(self.methods, self.redactor), self.redactor)
        site = QuietSite(resource, timeout=IDLE_TIMEOUT)
        try:
            self.port = listen_tcp(self.config.ports, self.config.host, site)
        except CannotListenError as error:
            logger.error(
                "JSON-RPC: cannot listen on %s port %s: %s; live stats are off",
                self.config.host,
                "-".join(map(str, self.config.ports)),
                error.socketError,
            )
            return
        address = self.port.getHost()
        logger.info("JSON-RPC: listening on %s (read-only)", url_for(address.host, address.port))

    async def engine_stopped(self) -> None:
        """Stop listening, and return once the port is closed."""
        port, self.port = self.port, None
        if port is not None:
            await maybe_deferred_to_future(port.stopListening())
