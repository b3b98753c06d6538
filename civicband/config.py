"""Every civicband setting read and checked in one place, before any request or connection.

The crawl command, both spiders (also under scrapyd, which skips the command) and `scrapy jobs`
call `check_settings`; components read their typed values here, so a bad value is one line
naming it and exit status 2, never a traceback from inside a component.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from civicband import datasette
from civicband.args import ArgumentError, parse_batch_size, parse_bool

# Numeric settings, each (kind, lowest, highest or None).
NUMBER_SETTINGS: dict[str, tuple[type, float, float | None]] = {
    "CIVICBAND_DB_POOL_SIZE": (int, 1, None),
    "CIVICBAND_DB_RETRIES": (int, 0, None),
    "CIVICBAND_DB_TIMEOUT": (float, 0.1, None),
    "CIVICBAND_LEASE_CHECK_INTERVAL": (float, 0.1, None),
    "CIVICBAND_MAX_ACTIVE_JOBS": (int, 1, None),
    "CIVICBAND_DIGEST_SPLIT_ROWS": (int, 0, None),
    "CIVICBAND_REQUEST_BYTES": (int, 0, None),
    "CIVICBAND_PROGRESS_INTERVAL": (float, 0, None),
    "CIVICBAND_VERIFY_MAX_MISSING_ROWS": (int, 0, None),
    "CIVICBAND_VERIFY_MAX_MISSING_RATIO": (float, 0, 1),
    "CIVICBAND_SHRINK_GUARD": (float, 0, 1),
    "CIVICBAND_REMOVAL_WARN_RATIO": (float, 0, 1),
    "CIVICBAND_TOMBSTONE_DAYS": (float, 0, None),
    "CIVICBAND_MONITOR_MAX_REJECTED": (int, 0, None),
    "CIVICBAND_BACKOFF_BASE": (float, 0, None),
    "CIVICBAND_BACKOFF_MAX": (float, 0, None),
    "CIVICBAND_BACKOFF_JITTER": (float, 0, None),
    "CIVICBAND_RATE_LIMIT_WINDOW": (float, 0, None),
    "CIVICBAND_RATE_LIMIT_MAX_WAITS": (int, 0, None),
    "CIVICBAND_PUBLIC_REQUESTS_PER_MINUTE": (float, 0, None),
    "CIVICBAND_PUBLIC_PAGE_SIZE": (int, 0, None),
}
DEFAULT_JSONRPC_HOST = "127.0.0.1"
DEFAULT_JSONRPC_PORTS = (6080, 7030)
_PORT_TEXT = re.compile(r"\s*(?:\[\s*(\d+)\s*(?:,\s*(\d+)\s*)?\]|(\d+)\s*(?:,\s*(\d+)\s*)?)")


@dataclass(frozen=True)
class Limits:
    """The retry, rate-limit and public-pace settings, checked and typed."""

    backoff_base: float
    backoff_max: float
    backoff_jitter: float
    rate_limit_window: float
    rate_limit_max_waits: int
    public_per_minute: float
    public_page_size: int
    slot: str


@dataclass(frozen=True)
class JsonRpcConfig:
    """The JSON-RPC settings, checked and typed."""

    enabled: bool
    host: str
    ports: list[int]


def number(settings: Any, name: str) -> float:
    """One numeric setting within its range (NUMBER_SETTINGS), or a one-line error naming it."""
    kind, low, high = NUMBER_SETTINGS[name]
    raw = settings.get(name)
    try:
        value = kind(str(raw).strip()) if raw is not None else None
    except ValueError:
        value = None
    if (
        value is None
        or not math.isfinite(value)
        or value < low
        or (high is not None and value > high)
    ):
        what = "a whole number" if kind is int else "a number"
        span = f"from {low:g}" + (f" to {high:g}" if high is not None else " up")
        raise ArgumentError(f"{name}: expected {what} {span}, got {raw!r}")
    return value


def check_number_settings(settings: Any, names: Any = None) -> None:
    """Every numeric setting (or those named) is a number within its range."""
    for name in names or NUMBER_SETTINGS:
        number(settings, name)


def read_limits(settings: Any) -> Limits:
    """The retry and pace settings the middlewares use."""
    limits = Limits(
        backoff_base=number(settings, "CIVICBAND_BACKOFF_BASE"),
        backoff_max=number(settings, "CIVICBAND_BACKOFF_MAX"),
        backoff_jitter=number(settings, "CIVICBAND_BACKOFF_JITTER"),
        rate_limit_window=number(settings, "CIVICBAND_RATE_LIMIT_WINDOW"),
        rate_limit_max_waits=int(number(settings, "CIVICBAND_RATE_LIMIT_MAX_WAITS")),
        public_per_minute=number(settings, "CIVICBAND_PUBLIC_REQUESTS_PER_MINUTE"),
        public_page_size=int(number(settings, "CIVICBAND_PUBLIC_PAGE_SIZE")),
        slot=str(settings.get("CIVICBAND_DOWNLOAD_SLOT") or ""),
    )
    if limits.backoff_max < limits.backoff_base:
        raise ArgumentError(
            f"CIVICBAND_BACKOFF_MAX ({limits.backoff_max:g}) must be at least"
            f" CIVICBAND_BACKOFF_BASE ({limits.backoff_base:g})"
        )
    if not limits.slot:
        raise ArgumentError("CIVICBAND_DOWNLOAD_SLOT: must not be empty (default civic.band)")
    return limits


def parse_port_range(value: Any) -> list[int]:
    """JSONRPC_PORT as listen_tcp wants it: [port] or [low, high]; a bad one is a one-line error."""
    bad = ArgumentError(
        "JSONRPC_PORT: expected a port or a [low, high] range such as 6080, 6080,7030"
        f" or [6080, 7030], got {value!r}"
    )
    if isinstance(value, str):
        match = _PORT_TEXT.fullmatch(value)
        if match is None:
            raise bad
        items: list[Any] = [group for group in match.groups() if group is not None]
    elif isinstance(value, list | tuple) and 1 <= len(value) <= 2:
        items = list(value)
    else:
        items = [value]
    ports = []
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool):
            ports.append(item)
        elif isinstance(item, str) and item.strip().isdigit():
            ports.append(int(item))
        else:
            raise bad
    if len(ports) == 1 and not 0 <= ports[0] <= 65535:
        raise ArgumentError(f"JSONRPC_PORT: a port is 1 to 65535 (0: any free one), got {value!r}")
    if len(ports) == 2 and not 1 <= ports[0] <= ports[1] <= 65535:
        raise ArgumentError(
            f"JSONRPC_PORT: a range is [low, high] with 1 <= low <= high <= 65535, got {value!r}"
        )
    return ports


def read_jsonrpc(settings: Any) -> JsonRpcConfig:
    """The JSONRPC_* settings."""
    enabled = parse_bool("JSONRPC_ENABLED", settings.get("JSONRPC_ENABLED", False))
    host = settings.get("JSONRPC_HOST", DEFAULT_JSONRPC_HOST)
    if not isinstance(host, str) or not host.strip():
        raise ArgumentError(
            f"JSONRPC_HOST: expected an address such as 127.0.0.1 (0.0.0.0: every interface),"
            f" got {host!r}"
        )
    ports = parse_port_range(settings.get("JSONRPC_PORT", list(DEFAULT_JSONRPC_PORTS)))
    return JsonRpcConfig(enabled=enabled, host=host.strip(), ports=ports)


def check_settings(settings: Any) -> None:
    """Every setting the crawl's components read: the one check, before anything starts."""
    check_number_settings(settings)
    read_limits(settings)
    read_jsonrpc(settings)
    try:
        datasette.check_site_url(settings.get("CIVICBAND_SITE_URL"))
    except ValueError as error:
        raise ArgumentError(str(error)) from None
    try:
        parse_batch_size(settings.get("CIVICBAND_BATCH_SIZE"))
    except ArgumentError as error:
        raise ArgumentError(f"CIVICBAND_BATCH_SIZE: {error}") from None
