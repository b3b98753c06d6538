"""What both spiders share: the crawl's database, and stopping on bad input."""

from __future__ import annotations

import logging

from scrapy import Spider
from scrapy.exceptions import CloseSpider

from civicband.store import Store

logger = logging.getLogger(__name__)


class StoreSpider(Spider):
    """A spider that writes to the mirror through the crawl's Store extension."""

    @property
    def store(self) -> Store:
        """The crawl's database."""
        store = self.crawler.get_extension(Store)
        assert store is not None, "civicband.store.Store must be in EXTENSIONS"
        return store

    def _stop(self, message: str, reason: str) -> CloseSpider:
        """Bad input or no database before any fetch: one line; the reason makes exit status 2."""
        logger.error(message)
        return CloseSpider(reason)
