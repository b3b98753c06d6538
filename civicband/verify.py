"""Verification's verdict: is the mirror equal to the source, and if not, how far off (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from civicband.digest import Difference

if TYPE_CHECKING:
    from civicband.exact import Exact  # exact reads the mirror through jobs, which needs Verdict


@dataclass(frozen=True)
class Verdict:
    """What one (site, type) verification found."""

    status: str  # passed, warned, failed, unknown
    expected: int | None
    actual: int
    rejected: int
    missing: int | None
    extra: int | None
    stale: int | None
    message: str
    method: str = "digest"  # which check judged: the bucket digests, or every value (exact)

    @property
    def job_status(self) -> str:
        """Only a failed verification fails the job; an unknown one completes it, said so."""
        return "failed" if self.status == "failed" else "completed"


def decide(
    expected: int | None,
    actual: int,
    rejected: int,
    *,
    equal: bool,
    difference: Difference | None,
    max_rows: int,
    max_ratio: float,
    note: str = "",
    method: str = "digest",
) -> Verdict:
    """Judge a comparison of digests (and, where they differ, of the listed ids).

    `passed` needs equal digests; never an unknown source, never only equal counts. Past
    `max_rows` or `max_ratio` of expected, missing (or out-of-date) pages fail the job.
    """
    shown = f"Expected {expected}, got {actual}" + (f", {rejected} rejected" if rejected else "")
    suffix = f" ({note})" if note else ""
    if expected is None:
        message = f"source digest unknown: not verified; {actual} pages stored{suffix}"
        return Verdict("unknown", None, actual, rejected, None, None, None, message, method)
    if equal:
        return Verdict("passed", expected, actual, rejected, 0, 0, 0, f"Complete. {shown}", method)

    def over(n: int) -> bool:
        return n > max_rows or n > max_ratio * expected

    if difference is None:
        # The differing buckets could not be listed: judge by the counts, never pass.
        missing = expected - rejected - actual
        if missing > 0 and over(missing):
            status, head = "failed", f"Missing {missing} pages! {shown}"
        else:
            status, head = "warned", f"The copy differs from the source. {shown}"
        note = note or "the differing ids could not be listed"
        message = f"{head} ({note})"
        return Verdict(status, expected, actual, rejected, missing, None, None, message, method)
    missing, extra, stale = (
        len(difference.missing),
        len(difference.extra),
        len(difference.stale),
    )
    parts = []
    if extra:
        parts.append(f"{extra} pages the source no longer has")
    if stale:
        parts.append(f"{stale} pages out of date")
    if difference.stale_rejections:
        parts.append(f"{len(difference.stale_rejections)} rejections the source no longer has")
    tail = "".join(f"; {part}" for part in parts)
    if over(missing):
        status, message = "failed", f"Missing {missing} pages! {shown}{tail}"
    elif over(stale):
        status, message = "failed", f"{stale} pages out of date! {shown}"
    else:
        status = "warned"
        lead = f"Missing {missing} pages (within thresholds)" if missing else "Not equal"
        message = f"{lead}{tail}. {shown}; the next run fixes it"
    message += suffix
    return Verdict(status, expected, actual, rejected, missing, extra, stale, message, method)


def with_exact(
    equal: bool, difference: Difference | None, exact: Exact
) -> tuple[bool, Difference | None, str]:
    """The digests' finding with the exact comparison's folded in: (equal, difference, note).

    Values the digests cannot see changed are out of date all the same. The id sets are the
    digests' to prove: where the exact listing disagrees with equal digests about which ids
    exist, the site changed between the two, and nothing passes on that.
    """
    if equal and (exact.missing or exact.extra):
        note = (
            f"the exact listing found {exact.missing} pages missing and {exact.extra} extra"
            " where the digests found none: the site changed meanwhile?"
        )
        return False, None, note
    if not exact.stale:
        return equal, difference, ""
    if difference is None:
        if equal:
            return False, Difference([], [], list(exact.stale), []), ""
        return False, None, f"{len(exact.stale)} pages out of date by the exact comparison"
    stale = sorted({*difference.stale, *exact.stale})
    merged = Difference(difference.missing, difference.extra, stale, difference.stale_rejections)
    return False, merged, ""
