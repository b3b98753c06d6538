"""Verification's verdict: is the mirror equal to the source, and if not, how far off (pure)."""

from __future__ import annotations

from dataclasses import dataclass

from civicband.digest import Difference


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
) -> Verdict:
    """Judge a comparison of digests (and, where they differ, of the listed ids).

    `passed` needs equal digests; never an unknown source, never only equal counts. Past
    `max_rows` or `max_ratio` of expected, missing (or out-of-date) pages fail the job.
    """
    shown = f"Expected {expected}, got {actual}" + (f", {rejected} rejected" if rejected else "")
    suffix = f" ({note})" if note else ""
    if expected is None:
        message = f"source digest unknown: not verified; {actual} pages stored{suffix}"
        return Verdict("unknown", None, actual, rejected, None, None, None, message)
    if equal:
        return Verdict("passed", expected, actual, rejected, 0, 0, 0, f"Complete. {shown}")

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
        return Verdict(status, expected, actual, rejected, missing, None, None, f"{head} ({note})")
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
    return Verdict(status, expected, actual, rejected, missing, extra, stale, message + suffix)
