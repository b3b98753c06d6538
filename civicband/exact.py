"""exact=true: every row's page_image, entities_json and votes_json compared value by value.

The bucket digests sum a fingerprint of those columns, a sample of each value rather than a
hash, so some changes slip past them (civicband/digest.py). The exact check lists the three
columns of every row whose id is 12 hex digits at the source (keyset pages on id, untruncated
answers only: civicband.source.Source.values) and compares each answer with the same ids in the
mirror, as the mirror stores them (NULs removed). The text needs no listing: the id hashes it.
Memory stays one answer deep. Ids present on one side only are counted, not listed: proving
the id sets equal stays the digest's job.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from civicband import mirror
from civicband.digest import UNHASHED_COLUMNS
from civicband.rows import stored_text

if TYPE_CHECKING:
    from civicband.lifecycle import ActiveJob
    from civicband.registry import Registry
    from civicband.source import Source

Values = tuple[str | None, ...]


@dataclass
class Exact:
    """What comparing every value found."""

    stale: list[str] = field(default_factory=list)  # stored here with other values, in id order
    missing: int = 0  # at the source, neither stored nor rejected here
    extra: int = 0  # stored here, not at the source
    listed: int = 0  # source rows compared
    matched: int = 0  # of those, stored here as pages

    def add(self, other: Exact) -> None:
        """Count another answer's findings in."""
        self.stale += other.stale
        self.missing += other.missing
        self.extra += other.extra
        self.listed += other.listed
        self.matched += other.matched


def source_values(row: Mapping[str, Any]) -> Values:
    """A source row's values as the mirror would store them."""
    return tuple(stored_text(row.get(column)) for column in UNHASHED_COLUMNS)


def compare_answer(
    rows: Iterable[Mapping[str, Any]], pages: Mapping[str, Values], rejected: set[str]
) -> Exact:
    """One source answer against the mirror's pages and rejections of the same ids.

    `extra` is left to the end: it is the mirror's pages no answer matched.
    """
    found = Exact()
    for row in rows:
        row_id = str(row["id"])
        found.listed += 1
        stored = pages.get(row_id)
        if stored is None:
            found.missing += row_id not in rejected
            continue
        found.matched += 1
        if source_values(row) != tuple(stored):
            found.stale.append(row_id)
    return found


Read = Callable[[Callable[[Any], Awaitable[Any]]], Awaitable[Any]]


async def compare(source: Source, subdomain: str, document_type: str, read: Read) -> Exact:
    """Every source answer compared as it comes; `read` runs a step on the mirror."""
    total = Exact()
    async for rows in source.reads.values(subdomain, document_type):
        ids = [str(row["id"]) for row in rows]
        pages, rejected = await read(
            lambda conn, ids=ids: mirror.exact_values(conn, subdomain, document_type, ids)
        )
        total.add(compare_answer(rows, pages, rejected))
    here = await read(lambda conn: mirror.hex_page_count(conn, subdomain, document_type))
    total.extra = here - total.matched
    return total


async def check(job: ActiveJob, registry: Registry, source: Source) -> Exact:
    """The exact comparison of one job's (site, type), reading the mirror under its lease."""

    def read(work: Callable[[Any], Awaitable[Any]]) -> Awaitable[Any]:
        return registry.run_step(job, "reading the mirror", work)

    found = await compare(source, job.subdomain, job.document_type, read)
    source.stats.inc_value("civicband/exact/compared", found.listed)
    source.stats.inc_value("civicband/exact/stale", len(found.stale))
    return found
