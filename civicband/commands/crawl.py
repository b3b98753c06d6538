"""`scrapy crawl` with civicband's exit status: 0 done, 1 a job failed, 2 bad input, 3 paused."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

from scrapy.commands.crawl import Command as ScrapyCrawl
from scrapy.exceptions import UsageError

from civicband.args import ArgumentError
from civicband.config import check_settings
from civicband.extensions.outcome import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
)

# The same signal twice within this many seconds is one request to stop: `uv run` without a
# terminal forwards SIGINT/SIGTERM to a child that already got it from its process group.
SIGNAL_ECHO = 1.0
_HANDLERS = (
    ("_signal_shutdown", "_signal_kill"),
    ("_signal_shutdown_reactorless", "_signal_kill_reactorless"),
)


def debounce_signals(
    process: Any, window: float = SIGNAL_ECHO, clock: Callable[[], float] = time.monotonic
) -> dict[int, float]:
    """Make Scrapy's second-signal kill ignore an echo of the first signal.

    Scrapy treats any second SIGINT/SIGTERM as "force an unclean shutdown"; its handlers look
    themselves up on the process object, so wrapping them there is enough (Scrapy has no
    setting for this). A second signal after `window` still stops at once. Returns the
    signals received (number: when), filled in as they come.
    """
    first: dict[int, float] = {}
    for shutdown_name, kill_name in _HANDLERS:
        shutdown = getattr(process, shutdown_name, None)
        kill = getattr(process, kill_name, None)
        if shutdown is None or kill is None:
            continue

        def on_kill(signum: int, frame: Any, kill: Callable = kill) -> None:
            started = first.get(signum)
            if started is not None and clock() - started < window:
                return  # the same signal again at once: an echo, not a second request
            kill(signum, frame)

        def on_shutdown(
            signum: int, frame: Any, shutdown: Callable = shutdown, on_kill: Callable = on_kill
        ) -> None:
            if first:
                # Python runs a handler again inside itself when a signal lands before it has
                # installed the next one: that is a second signal too.
                on_kill(signum, frame)
                return
            first[signum] = clock()
            shutdown(signum, frame)

        setattr(process, shutdown_name, on_shutdown)
        setattr(process, kill_name, on_kill)
    return first


class Command(ScrapyCrawl):
    """Scrapy's crawl plus one-line errors for bad input and an exit status that means something."""

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        """Run one spider and turn what happened into the exit status."""
        if len(args) != 1:
            raise UsageError("give exactly one spider name, e.g. scrapy crawl civicband")
        assert self.crawler_process
        crawler = self._create_crawler(args[0])
        check = getattr(crawler.spidercls, "check_arguments", None)
        try:
            check_settings(crawler.settings)
            if check is not None:
                check(opts.spargs, crawler.settings)
        except ArgumentError as error:
            # A bad argument is the user's to fix: one line, no traceback, nothing fetched.
            print(f"civicband: error: {error}", file=sys.stderr)
            self.exitcode = EXIT_BAD_INPUT
            return
        received = debounce_signals(self.crawler_process)
        self.crawler_process.crawl(crawler, **opts.spargs)
        self.crawler_process.start()
        try:
            stats = crawler.stats
        except RuntimeError:
            self.exitcode = EXIT_FAILED
            return
        if stats.get_value("finish_reason") is None:
            # The crawl never closed: a second signal forced an unclean stop, or it broke.
            self.exitcode = EXIT_INTERRUPTED if received else EXIT_FAILED
            return
        # Outcome decided it (civicband.extensions.outcome), once every job was closed.
        self.exitcode = stats.get_value("civicband/exit_code", EXIT_FAILED)
