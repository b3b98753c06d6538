"""Repair planning: which id buckets differ, and what to fetch or delete in each (pure)."""

from __future__ import annotations

from dataclasses import dataclass, field


def differing_buckets(source: dict[str, int], local: dict[str, int]) -> list[str]:
    """Prefixes whose row counts differ; only these are listed id by id."""
    return sorted(b for b in source.keys() | local.keys() if source.get(b, 0) != local.get(b, 0))


@dataclass
class RepairState:
    """One job's repair in progress: buckets still open and fetches still in flight."""

    open_buckets: set[str] = field(default_factory=set)
    listed: dict[str, list[str]] = field(default_factory=dict)
    fetching: dict[str, int] = field(default_factory=dict)

    def bucket_done(self, bucket: str) -> bool:
        """Close a bucket; True when it was the last one open."""
        self.open_buckets.discard(bucket)
        self.listed.pop(bucket, None)
        self.fetching.pop(bucket, None)
        return not self.open_buckets


def plan_bucket(
    source_ids: list[str], local_ids: set[str], rejected_ids: set[str]
) -> tuple[list[str], list[str]]:
    """From a complete listing: ids to fetch (not here, not rejected) and ids to delete."""
    at_source = set(source_ids)
    missing = sorted(at_source - local_ids - rejected_ids)
    extra = sorted(local_ids - at_source)
    return missing, extra


def chunks(ids: list[str], size: int) -> list[list[str]]:
    """Ids in groups small enough for one SQL answer."""
    return [ids[i : i + size] for i in range(0, len(ids), size)]
