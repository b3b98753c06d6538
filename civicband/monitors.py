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

`Monitoring` is a Scrapy add-on: listed in ADDONS, `-s SPIDERMON_ENABLED=True` alone adds
Spidermon's own extension and this suite to `SPIDERMON_SPIDER_CLOSE_MONITORS` (next to any
other suites named there); every other SPIDERMON_* setting works as Spidermon documents it.
Without SPIDERMON_ENABLED it does nothing and imports nothing of Spidermon, so the crawl
runs the same where the extra is not installed.

Spidermon logs each monitor's result ("[Spidermon] ... OK" / "FAIL") and "OK" or "FAILED"
for the suite; the suite also records `civicband/monitors/passed` and
`civicband/monitors/failed` (how many monitors passed and failed) in the crawl's stats.
The exit status of `scrapy crawl` does not change: monitors report, they do not decide.
"""

from __future__ import annotations

from typing import Any

from scrapy.exceptions import NotConfigured
from scrapy.settings import BaseSettings

SUITE = "civicband.monitors.CivicbandMonitorSuite"
# Where Spidermon's documentation puts its extension; after Scrapy's CoreStats and
# civicband's Outcome, so `finish_reason` is set when the close monitors read it.
SPIDERMON_EXTENSION_PRIORITY = 500
MAX_REJECTED = "CIVICBAND_MONITOR_MAX_REJECTED"


class Monitoring:
    """Scrapy add-on: with SPIDERMON_ENABLED, run CivicbandMonitorSuite when the spider closes."""

    def update_settings(self, settings: BaseSettings) -> None:
        """Enable Spidermon's extension and this suite, before the settings freeze."""
        if not settings.getbool("SPIDERMON_ENABLED"):
            return
        try:
            from spidermon.contrib.scrapy.extensions import Spidermon
        except ImportError as missing:
            raise NotConfigured(
                f"SPIDERMON_ENABLED is set but Spidermon cannot be imported ({missing}):"
                " install civicband[monitoring]; the crawl runs without monitors"
            ) from missing
        settings.setdefault_in_component_priority_dict(
            "EXTENSIONS", Spidermon, SPIDERMON_EXTENSION_PRIORITY
        )
        settings.add_to_list("SPIDERMON_SPIDER_CLOSE_MONITORS", SUITE)


# Defined on first use (PEP 562), so that the add-on, listed in ADDONS for every crawl, imports
# nothing of Spidermon unless SPIDERMON_ENABLED asks for it.
MONITORS = (
    "JobsMonitor",
    "VerificationMonitor",
    "RejectedRowsMonitor",
    "RecordResults",
    "CivicbandMonitorSuite",
)


def __getattr__(name: str) -> Any:
    if name not in MONITORS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals().update(_define_monitors())
    return globals()[name]


def _count(stats: Any, name: str) -> int:
    return int(stats.get(name) or 0)


def _define_monitors() -> dict[str, type]:
    """The monitors and the suite; needs Spidermon (civicband[monitoring])."""
    from spidermon import Action, MonitorSuite, actions, monitors
    from spidermon.contrib.scrapy.monitors import BaseScrapyMonitor, FinishReasonMonitor

    @monitors.name("Jobs monitor")
    class JobsMonitor(BaseScrapyMonitor):
        """No job failed, and no named site failed before it became a job."""

        @monitors.name("Should have no failed jobs")
        def test_no_failed_jobs(self) -> None:
            failed = _count(self.stats, "civicband/jobs/failed")
            self.assertEqual(failed, 0, msg=f"{failed} jobs failed (see backfill_jobs.last_error)")

        @monitors.name("Should have no failed sites")
        def test_no_failed_sites(self) -> None:
            failed = _count(self.stats, "civicband/sites/failed")
            self.assertEqual(failed, 0, msg=f"{failed} named sites failed before becoming jobs")

    @monitors.name("Verification monitor")
    class VerificationMonitor(BaseScrapyMonitor):
        """No verification found the copy short of its thresholds."""

        @monitors.name("Should have no failed verification")
        def test_no_failed_verification(self) -> None:
            failed = _count(self.stats, "civicband/verify/failed")
            self.assertEqual(failed, 0, msg=f"{failed} verifications failed")

    @monitors.name("Rejected rows monitor")
    class RejectedRowsMonitor(BaseScrapyMonitor):
        """At most CIVICBAND_MONITOR_MAX_REJECTED rows (default 0) went to rejected_rows."""

        @monitors.name("Should reject at most CIVICBAND_MONITOR_MAX_REJECTED rows")
        def test_rejected_rows_within_threshold(self) -> None:
            allowed = self.crawler.settings.getint(MAX_REJECTED, 0)
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
        """Count the monitors that passed and failed in the crawl's stats."""

        def run_action(self) -> None:
            stats = self.data.crawler.stats
            stats.set_value("civicband/monitors/passed", len(self.result.monitors_passed_results))
            stats.set_value("civicband/monitors/failed", len(self.result.monitors_failed_results))

    class CivicbandMonitorSuite(MonitorSuite):
        """A crawl's verdict: jobs, verification, rejected rows and Spidermon's finish reason."""

        monitors = [JobsMonitor, VerificationMonitor, RejectedRowsMonitor, FinishReasonMonitor]
        monitors_finished_actions = [RecordResults]

    defined = {
        cls.__name__: cls
        for cls in (
            JobsMonitor,
            VerificationMonitor,
            RejectedRowsMonitor,
            RecordResults,
            CivicbandMonitorSuite,
        )
    }
    for name, cls in defined.items():
        cls.__qualname__ = name  # as if defined at module level: load_object paths, reprs
    return defined
