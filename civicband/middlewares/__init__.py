"""civicband's middlewares, one file each; the names settings and other modules use, in one place.

- retry.py      BackoffRetryMiddleware: Scrapy's retries + backoff, Datasette's errors, bad bodies
- ratelimit.py  SlotPauses: a 429 or civic.band's 402 pauses the whole download slot
- pace.py       PublicRateLimit (add-on), PublicPageCap: civic.band's public pace and page size
- meta.py       the request meta keys they share with the spider and the source
"""

from civicband.middlewares.meta import RATE_LIMIT_WAITS, RETRIES_EXHAUSTED, SPLIT_ON_INTERRUPT
from civicband.middlewares.pace import PublicPageCap, PublicRateLimit
from civicband.middlewares.retry import BackoffRetryMiddleware

__all__ = [
    "RATE_LIMIT_WAITS",
    "RETRIES_EXHAUSTED",
    "SPLIT_ON_INTERRUPT",
    "BackoffRetryMiddleware",
    "PublicPageCap",
    "PublicRateLimit",
]
