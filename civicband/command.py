"""What the commands that read the mirror between runs share (`scrapy jobs`, `scrapy changes`).

Outside civicband/commands: Scrapy takes every command class in that package for a command.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from scrapy.commands import ScrapyCommand

from civicband import db
from civicband.embedded import EmbeddedPostgres
from civicband.extensions.outcome import EXIT_BAD_INPUT


@contextlib.contextmanager
def mirror_url(settings: Any) -> Iterator[str]:
    """The mirror's database for a command: the setting's URL, else the embedded server's."""
    url = settings.get("CIVICBAND_DATABASE_URL") or None
    if url is not None:
        yield url
        return
    embedded = EmbeddedPostgres(Path(settings.get("CIVICBAND_HOME") or ".civicband"))
    try:
        yield embedded.start()
    finally:
        embedded.stop()


class MirrorCommand(ScrapyCommand):
    """A command that reads the mirror between runs, as the crawl finds it."""

    requires_project = True
    requires_crawler_process = False
    default_settings: ClassVar[dict[str, Any]] = {"LOG_ENABLED": False}

    def _error(self, message: str) -> None:
        """What the user must fix, on one line, and the crawl command's status for bad input."""
        print(f"civicband: error: {db.one_line(RuntimeError(message))}", file=sys.stderr)
        self.exitcode = EXIT_BAD_INPUT
