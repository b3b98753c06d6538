"""`scrapy crawl` with civicband's exit status: 0 done, 1 a job failed, 2 bad input, 3 paused."""

from __future__ import annotations

import argparse
import sys

from scrapy.commands.crawl import Command as ScrapyCrawl
from scrapy.exceptions import UsageError

from civicband.args import ArgumentError
from civicband.extensions.outcome import EXIT_BAD_INPUT, EXIT_FAILED, exit_status


class Command(ScrapyCrawl):
    """Scrapy's crawl plus one-line errors for bad input and an exit status that means something."""

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        """Run one spider and turn what happened into the exit status."""
        if len(args) != 1:
            raise UsageError("give exactly one spider name, e.g. scrapy crawl civicband")
        assert self.crawler_process
        crawler = self._create_crawler(args[0])
        check = getattr(crawler.spidercls, "check_arguments", None)
        if check is not None:
            try:
                check(opts.spargs, crawler.settings)
            except ArgumentError as error:
                # A bad argument is the user's to fix: one line, no traceback, nothing fetched.
                print(f"civicband: error: {error}", file=sys.stderr)
                self.exitcode = EXIT_BAD_INPUT
                return
        self.crawler_process.crawl(crawler, **opts.spargs)
        self.crawler_process.start()
        try:
            stats = crawler.stats
        except RuntimeError:
            self.exitcode = EXIT_FAILED
            return
        self.exitcode = exit_status(stats)
