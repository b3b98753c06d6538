"""Verification's verdict: compare the source's count with the mirror, by the plan's thresholds."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Verdict:
    """What one (site, type) verification found."""

    status: str  # passed, warned, failed, unknown
    expected: int | None
    actual: int
    rejected: int
    missing: int | None
    message: str

    @property
    def job_status(self) -> str:
        """Only a failed verification fails the job; an unknown count completes it, said so."""
        return "failed" if self.status == "failed" else "completed"


def decide(
    expected: int | None, actual: int, rejected: int, *, max_rows: int, max_ratio: float
) -> Verdict:
    """missing = expected - rejected - actual; past max_rows or max_ratio of expected, fail."""
    if expected is None:
        return Verdict(
            "unknown",
            None,
            actual,
            rejected,
            None,
            f"source count unknown (timed out): not verified; {actual} pages stored",
        )
    missing = expected - rejected - actual
    shown = f"Expected {expected}, got {actual}" + (f", {rejected} rejected" if rejected else "")
    if missing > max_rows or missing > max_ratio * expected:
        return Verdict(
            "failed", expected, actual, rejected, missing, f"Missing {missing} pages! {shown}"
        )
    if missing > 0:
        return Verdict(
            "warned",
            expected,
            actual,
            rejected,
            missing,
            f"Missing {missing} pages (within thresholds). {shown}",
        )
    if missing < 0:
        return Verdict(
            "warned",
            expected,
            actual,
            rejected,
            missing,
            f"{-missing} pages the source no longer has (repair=true removes them). {shown}",
        )
    return Verdict("passed", expected, actual, rejected, 0, f"Complete. {shown}")
