"""Spidermon monitors of a crawl (the optional extra `civicband[monitoring]`).

`CivicbandMonitorSuite` judges a crawl when the spider closes, from its stats:

- "Jobs monitor": no job failed (`civicband/jobs/failed`) and no named site failed before
  it became a job (`civicband/sites/failed`, an unknown site);
- "Verification monitor": no verification failed (`civicband/verify/failed`);
- "Rejected rows monitor": at most `CIVICBAND_MONITOR_MAX_REJECTED` rows were rejected
  (`civicband/rows/rejected`); the default 0 fails on any rejected row, as Spidermon's own
  error-count monitors do; raise it for sources known to hold a few bad rows;
- Spidermon's own "Finish Reason Monitor": the crawl ended for one of
  `SPIDERMON_EXPECTED_FINISH_REASONS` (default `["finished"]`; Ctrl-C ends it with
  "shutdown", which fails).

civicband.extensions.monitoring.Monitoring (an add-on in the project's ADDONS) runs it
when `-s SPIDERMON_ENABLED=True` is given. The stats it reads are final when the spider
closes: the spider stays open while this process holds a job, and a job's verdict, failure
and rejected rows are counted before it lets the job go. Spidermon logs each monitor's result
and the suite's; the suite also counts the monitors that passed and failed in the stats
(`civicband/monitors/passed`, `civicband/monitors/failed`). Monitors report; the exit status
of `scrapy crawl` stays the crawl's own.
"""

from __future__ import annotations

from typing import Any

from spidermon import Action, MonitorSuite, actions, monitors
from spidermon.contrib.scrapy.monitors import BaseScrapyMonitor, FinishReasonMonitor

MAX_REJECTED = "CIVICBAND_MONITOR_MAX_REJECTED"


def _count(stats: Any, name: str) -> int:
    return int(stats.get(name) or 0)


@monitors.name("Jobs monitor")
class JobsMonitor(BaseScrapyMonitor):
    """No job failed, and no named site failed before it became a job."""

    @monitors.name("Should have no failed jobs")
    def test_no_failed_jobs(self) -> None:
        """A failed job keeps its reason in backfill_jobs.last_error."""
        failed = _count(self.stats, "civicband/jobs/failed")
        self.assertEqual(failed, 0, msg=f"{failed} jobs failed (see backfill_jobs.last_error)")

    @monitors.name("Should have no failed sites")
    def test_no_failed_sites(self) -> None:
        """A named site that never became a job copied nothing."""
        failed = _count(self.stats, "civicband/sites/failed")
        self.assertEqual(failed, 0, msg=f"{failed} named sites failed before becoming jobs")


@monitors.name("Verification monitor")
class VerificationMonitor(BaseScrapyMonitor):
    """No verification found the copy short of its thresholds."""

    @monitors.name("Should have no failed verification")
    def test_no_failed_verification(self) -> None:
        """A failed verification means the mirror is not the source."""
        failed = _count(self.stats, "civicband/verify/failed")
        self.assertEqual(failed, 0, msg=f"{failed} verifications failed")


@monitors.name("Rejected rows monitor")
class RejectedRowsMonitor(BaseScrapyMonitor):
    """At most CIVICBAND_MONITOR_MAX_REJECTED rows went to rejected_rows."""

    @monitors.name("Should reject at most CIVICBAND_MONITOR_MAX_REJECTED rows")
    def test_rejected_rows_within_threshold(self) -> None:
        """Rejected rows are kept aside, not mirrored: past the threshold someone should look."""
        allowed = self.crawler.settings.getint(MAX_REJECTED)
        rejected = _count(self.stats, "civicband/rows/rejected")
        fetched = _count(self.stats, "civicband/rows/fetched")
        self.assertLessEqual(
            rejected,
            allowed,
            msg=f"{rejected} rows rejected of {fetched} fetched;"
            f" at most {allowed} allowed ({MAX_REJECTED})",
        )


@actions.name("Record monitor results in stats")
class RecordResults(Action):
    """Count the monitors that passed and failed in the stats, for scripts that read them."""

    def run_action(self) -> None:
        """Spidermon's own result holds one entry per monitor method run."""
        stats = self.data.crawler.stats
        stats.set_value("civicband/monitors/passed", len(self.result.monitors_passed_results))
        stats.set_value("civicband/monitors/failed", len(self.result.monitors_failed_results))


class CivicbandMonitorSuite(MonitorSuite):
    """A crawl's verdict: jobs, verification, rejected rows and Spidermon's finish reason."""

    monitors = [JobsMonitor, VerificationMonitor, RejectedRowsMonitor, FinishReasonMonitor]
    monitors_finished_actions = [RecordResults]
