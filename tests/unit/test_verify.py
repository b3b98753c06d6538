"""verify.decide: the verdict on a comparison of digests, from the thresholds (pure)."""

from __future__ import annotations

import pytest

from civicband.digest import Difference
from civicband.verify import Verdict, decide

MAX_ROWS, MAX_RATIO = 100, 0.01  # the project's defaults (settings.py)


def ids(n: int, start: int = 0) -> list[str]:
    return [f"{i:012x}" for i in range(start, start + n)]


def diff(missing: int = 0, extra: int = 0, stale: int = 0, gone: int = 0) -> Difference:
    return Difference(ids(missing), ids(extra, 10**6), ids(stale, 2 * 10**6), ids(gone, 3 * 10**6))


def judge(expected, actual, rejected=0, *, equal=False, difference=None, note=""):
    return decide(
        expected,
        actual,
        rejected,
        equal=equal,
        difference=difference,
        max_rows=MAX_ROWS,
        max_ratio=MAX_RATIO,
        note=note,
    )


# ---- unknown and passed --------------------------------------------------------------------------


@pytest.mark.parametrize("equal", [True, False])
def test_an_unknown_source_is_unknown_never_passed(equal):
    verdict = judge(None, 250, 3, equal=equal, difference=diff())
    assert verdict == Verdict(
        "unknown",
        None,
        250,
        3,
        None,
        None,
        None,
        "source digest unknown: not verified; 250 pages stored",
    )
    assert verdict.job_status == "completed"


def test_an_unknown_source_says_the_note():
    verdict = judge(None, 0, note="SQL Interrupted")
    assert (
        verdict.message == "source digest unknown: not verified; 0 pages stored (SQL Interrupted)"
    )


def test_equal_digests_pass():
    verdict = judge(1000, 990, 10, equal=True, difference=None)
    assert verdict == Verdict(
        "passed", 1000, 990, 10, 0, 0, 0, "Complete. Expected 1000, got 990, 10 rejected"
    )
    assert verdict.job_status == "completed"
    assert judge(5, 5, equal=True).message == "Complete. Expected 5, got 5"


@pytest.mark.parametrize(
    "difference",
    [diff(), diff(stale=1), diff(extra=1, missing=1), None],
    ids=["nothing listed", "one stale", "a swap", "listing failed"],
)
def test_equal_counts_with_unequal_digests_never_pass(difference):
    verdict = judge(1000, 1000, equal=False, difference=difference)
    assert verdict.status == "warned"
    assert verdict.job_status == "completed"


# ---- missing pages: max_rows and max_ratio -------------------------------------------------------


def test_more_than_max_rows_missing_fails_even_under_the_ratio():
    verdict = judge(1_000_000, 999_899, difference=diff(missing=101))
    assert (verdict.status, verdict.missing) == ("failed", 101)
    assert verdict.message == "Missing 101 pages! Expected 1000000, got 999899"
    assert verdict.job_status == "failed"


def test_exactly_max_rows_missing_under_the_ratio_warns():
    verdict = judge(1_000_000, 999_900, difference=diff(missing=100))
    assert (verdict.status, verdict.missing) == ("warned", 100)
    assert verdict.message == (
        "Missing 100 pages (within thresholds). Expected 1000000, got 999900; the next run fixes it"
    )


@pytest.mark.parametrize(
    ("expected", "missing", "status"),
    [
        (5000, 50, "warned"),  # exactly 1 %
        (5000, 51, "failed"),  # just over
        (100, 1, "warned"),
        (100, 2, "failed"),
        (300, 3, "warned"),
        (700, 7, "warned"),  # 0.01 * 700 is 7.000000000000001
        (10, 1, "failed"),  # 10 %, far under max_rows
    ],
)
def test_the_ratio_is_of_expected_and_its_bound_is_allowed(expected, missing, status):
    verdict = judge(expected, expected - missing, difference=diff(missing=missing))
    assert verdict.status == status
    if status == "failed":
        assert (
            verdict.message
            == f"Missing {missing} pages! Expected {expected}, got {expected - missing}"
        )


def test_the_failure_message_names_rejected_rows_and_what_else_differs():
    verdict = judge(1000, 880, 20, difference=diff(missing=100, extra=2, stale=3, gone=1))
    assert verdict.status == "failed"
    assert verdict.message == (
        "Missing 100 pages! Expected 1000, got 880, 20 rejected; 2 pages the source no longer"
        " has; 3 pages out of date; 1 rejections the source no longer has"
    )
    assert (verdict.expected, verdict.actual, verdict.rejected) == (1000, 880, 20)
    assert (verdict.missing, verdict.extra, verdict.stale) == (100, 2, 3)


def test_the_thresholds_are_the_arguments():
    difference = diff(missing=5)
    kw = {"equal": False, "difference": difference}
    assert decide(100, 95, 0, max_rows=4, max_ratio=1.0, **kw).status == "failed"
    assert decide(100, 95, 0, max_rows=5, max_ratio=1.0, **kw).status == "warned"
    assert decide(100, 95, 0, max_rows=1000, max_ratio=0.04, **kw).status == "failed"
    assert decide(100, 95, 0, max_rows=1000, max_ratio=0.05, **kw).status == "warned"


# ---- stale and extra pages -----------------------------------------------------------------------


def test_stale_pages_past_the_thresholds_fail():
    verdict = judge(1_000_000, 1_000_000, difference=diff(stale=101))
    assert verdict.status == "failed"
    assert verdict.message == "101 pages out of date! Expected 1000000, got 1000000"
    assert judge(1000, 1000, difference=diff(stale=11)).status == "failed"  # over 1 %


def test_stale_pages_within_the_thresholds_warn():
    verdict = judge(1000, 1000, difference=diff(stale=10))
    assert verdict.status == "warned"
    assert verdict.message == (
        "Not equal; 10 pages out of date. Expected 1000, got 1000; the next run fixes it"
    )


def test_extra_pages_only_warn_however_many():
    verdict = judge(100, 5100, difference=diff(extra=5000))
    assert (verdict.status, verdict.extra) == ("warned", 5000)
    assert verdict.message == (
        "Not equal; 5000 pages the source no longer has. Expected 100, got 5100; the next run"
        " fixes it"
    )
    assert judge(100, 100, difference=diff(gone=500)).status == "warned"


def test_the_note_follows_a_judged_message():
    verdict = judge(1000, 1000, difference=diff(extra=1), note="catch-up digest")
    assert verdict.message.endswith("the next run fixes it (catch-up digest)")


# ---- the differing ids could not be listed -------------------------------------------------------


def test_a_failed_listing_judges_by_counts_and_fails_past_the_thresholds():
    verdict = judge(10_000, 9_849, 50, difference=None)
    assert (verdict.status, verdict.missing, verdict.extra, verdict.stale) == (
        "failed",
        101,
        None,
        None,
    )
    assert verdict.message == (
        "Missing 101 pages! Expected 10000, got 9849, 50 rejected"
        " (the differing ids could not be listed)"
    )


@pytest.mark.parametrize(("actual", "missing"), [(10_000, 0), (9_900, 100), (10_300, -300)])
def test_a_failed_listing_never_passes(actual, missing):
    verdict = judge(10_000, actual, difference=None)
    assert (verdict.status, verdict.missing) == ("warned", missing)
    assert verdict.message == (
        f"The copy differs from the source. Expected 10000, got {actual}"
        " (the differing ids could not be listed)"
    )


def test_a_failed_listing_keeps_the_callers_note():
    verdict = judge(100, 100, difference=None, note="listing answer truncated")
    assert verdict.message.endswith("(listing answer truncated)")
    assert "could not be listed" not in verdict.message


# ---- job_status ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "job_status"),
    [
        ("passed", "completed"),
        ("warned", "completed"),
        ("unknown", "completed"),
        ("failed", "failed"),
    ],
)
def test_only_a_failed_verification_fails_the_job(status, job_status):
    assert Verdict(status, 1, 1, 0, 0, 0, 0, "").job_status == job_status
