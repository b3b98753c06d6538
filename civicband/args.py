"""Spider arguments: parsed and checked before any request, each error one line naming it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from civicband.datasette import MAX_PAGE_SIZE, SUBDOMAIN

DOCUMENT_TYPES = {"agenda": ("agenda",), "minutes": ("minutes",), "both": ("agenda", "minutes")}
TRUE = {"true", "1", "yes"}
FALSE = {"false", "0", "no"}


class ArgumentError(ValueError):
    """A spider argument or setting the user must fix; its message is one line."""


@dataclass(frozen=True)
class SpiderArguments:
    """The civicband spider's arguments, validated."""

    subdomains: list[str]
    document_types: tuple[str, ...]
    batch_size: int | None
    resume: bool
    verify_only: bool
    repair: bool
    full: bool = False
    allow_shrink: bool = False
    exact: bool = False  # compare every row's untrusted columns, not bucket fingerprints

    names = (
        "subdomain",
        "document_type",
        "batch_size",
        "resume",
        "verify_only",
        "repair",
        "full",
        "allow_shrink",
        "exact",
    )

    @property
    def mode(self) -> str:
        """What every job of the run does: default (catch up what exists), full, repair, verify."""
        if self.verify_only:
            return "verify_only"
        if self.repair:
            return "repair"
        return "full" if self.full else "default"


# Numeric settings, each (kind, lowest, highest or None): a bad value is refused by name
# before any request, instead of failing later inside a component with a traceback.
NUMBER_SETTINGS: dict[str, tuple[type, float, float | None]] = {
    "CIVICBAND_DB_POOL_SIZE": (int, 1, None),
    "CIVICBAND_DB_RETRIES": (int, 0, None),
    "CIVICBAND_DB_TIMEOUT": (float, 0.1, None),
    "CIVICBAND_LEASE_CHECK_INTERVAL": (float, 0.1, None),
    "CIVICBAND_MAX_ACTIVE_JOBS": (int, 1, None),
    "CIVICBAND_DIGEST_SPLIT_ROWS": (int, 0, None),
    "CIVICBAND_PROGRESS_INTERVAL": (float, 0, None),
    "CIVICBAND_VERIFY_MAX_MISSING_ROWS": (int, 0, None),
    "CIVICBAND_VERIFY_MAX_MISSING_RATIO": (float, 0, 1),
    "CIVICBAND_SHRINK_GUARD": (float, 0, 1),
    "CIVICBAND_REMOVAL_WARN_RATIO": (float, 0, 1),
    "CIVICBAND_TOMBSTONE_DAYS": (float, 0, None),
    "CIVICBAND_MONITOR_MAX_REJECTED": (int, 0, None),
}


def check_number_settings(settings: Any, names: Any = None) -> None:
    """Every numeric setting is a number within its range, or a one-line error naming it."""
    for name in names or NUMBER_SETTINGS:
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


def parse_bool(name: str, value: Any) -> bool:
    """true/false/1/0/yes/no, any case."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise ArgumentError(f"{name}: expected true/false/1/0/yes/no, got {value!r}")


def parse_subdomains(value: Any) -> list[str]:
    """One site, a comma list, or `all`; nothing that could point at another host."""
    if value is None or not str(value).strip():
        raise ArgumentError("subdomain: required, e.g. -a subdomain=oakland.ca or subdomain=all")
    names = [part.strip().lower() for part in str(value).split(",")]
    if names == ["all"]:
        return names
    bad = [name for name in names if not SUBDOMAIN.match(name) or name == "all"]
    if bad:
        raise ArgumentError(
            f"subdomain: {bad[0]!r} is not a civic.band subdomain"
            " (letters, digits, '-' and '.', e.g. oakland.ca; or `all` alone)"
        )
    return list(dict.fromkeys(names))


def parse_batch_size(value: Any) -> int:
    """Rows per API page: Datasette answers 400 above its max_returned_rows (1000)."""
    try:
        size = int(str(value).strip())
    except ValueError:
        raise ArgumentError(f"batch_size: expected a whole number, got {value!r}") from None
    if not 1 <= size <= MAX_PAGE_SIZE:
        raise ArgumentError(f"batch_size: must be between 1 and {MAX_PAGE_SIZE}, got {size}")
    return size


def parse_arguments(kwargs: dict[str, Any]) -> SpiderArguments:
    """Check every argument; unknown ones are left to Scrapy."""
    document_type = str(kwargs.get("document_type", "both")).strip().lower()
    if document_type not in DOCUMENT_TYPES:
        raise ArgumentError(
            f"document_type: must be agenda, minutes or both, got {kwargs.get('document_type')!r}"
        )
    batch_size = kwargs.get("batch_size")
    arguments = SpiderArguments(
        subdomains=parse_subdomains(kwargs.get("subdomain")),
        document_types=DOCUMENT_TYPES[document_type],
        batch_size=None if batch_size is None else parse_batch_size(batch_size),
        resume=parse_bool("resume", kwargs.get("resume", "false")),
        verify_only=parse_bool("verify_only", kwargs.get("verify_only", "false")),
        repair=parse_bool("repair", kwargs.get("repair", "false")),
        full=parse_bool("full", kwargs.get("full", "false")),
        allow_shrink=parse_bool("allow_shrink", kwargs.get("allow_shrink", "false")),
        exact=parse_bool("exact", kwargs.get("exact", "false")),
    )
    chosen = [name for name in ("verify_only", "repair", "full") if getattr(arguments, name)]
    if len(chosen) > 1:
        raise ArgumentError(f"{chosen[1]}: give at most one of verify_only, repair and full")
    if arguments.exact and arguments.full:
        # A full pass fetches every value already: an exact check would only list them twice.
        raise ArgumentError(
            "exact: goes with the default mode, repair or verify_only; full=true fetches every"
            " page already"
        )
    return arguments
