"""Test-only extension: when the crawler scheduled each download, and when each one ended.

Timing checks measure what the crawler did, on its own monotonic clock, not when requests
happened to arrive at the look-alike (arrival adds network and scheduling jitter on a loaded
machine). Loaded into a crawl with `sendlog_settings(path)`; read back with `read_sendlog`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Self

from scrapy import signals
from scrapy.crawler import Crawler

from civicband import settings as project


def sendlog_settings(path: Path) -> dict[str, str]:
    """Settings that add this extension to the project's and name its file."""
    extensions = {**project.EXTENSIONS, "tests.e2e.sendlog.SendLog": 900}
    return {"EXTENSIONS": json.dumps(extensions), "TEST_SENDLOG_FILE": str(path)}


def read_sendlog(path: Path) -> list[dict[str, Any]]:
    """Every download: url, status, `scheduled` (the slot's lastseen) and `start`/`end` times."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class SendLog:
    """Wrap the download handlers once the engine runs, and log each download."""

    def __init__(self, crawler: Crawler, path: Path) -> None:
        self.crawler = crawler
        self.path = path
        path.write_text("")

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        """Start when the engine does."""
        extension = cls(crawler, Path(crawler.settings.get("TEST_SENDLOG_FILE")))
        crawler.signals.connect(extension.engine_started, signal=signals.engine_started)
        return extension

    def engine_started(self) -> None:
        """From now on every download is logged."""
        downloader = self.crawler.engine.downloader
        handlers = downloader.handlers
        download = handlers.download_request_async

        async def logged(request: Any, *args: Any, **kwargs: Any) -> Any:
            slot = downloader.slots.get(request.meta.get("download_slot"))
            entry = {
                "url": request.url,
                "scheduled": slot.lastseen if slot is not None else None,
                "start": time.monotonic(),
            }
            try:
                response = await download(request, *args, **kwargs)
                entry["status"] = response.status
                return response
            except Exception as error:
                entry["status"] = type(error).__name__
                raise
            finally:
                entry["end"] = time.monotonic()
                with self.path.open("a") as out:
                    out.write(json.dumps(entry) + "\n")

        handlers.download_request_async = logged
