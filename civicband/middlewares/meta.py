"""The request meta keys and header the middlewares, the spider and the source agree on."""

SECRET_HEADER = "X-Service-Secret"
# A retry's backoff was already waited (the attempt it was waited for).
BACKOFF_DONE = "civicband_backoff_done"
# Rate-limit answers a request has waited out.
RATE_LIMIT_WAITS = "civicband_ratelimit_waits"
# Retries (or rate-limit waits) were used up: the response reaching the spider is the last one.
RETRIES_EXHAUSTED = "civicband_retries_exhausted"
# A waiting request handed back to the scheduler while the crawl stops.
REQUEUED = "civicband_requeued_on_stop"
# A query that may hit the time limit because it is too big: its caller splits it instead.
SPLIT_ON_INTERRUPT = "civicband_split_on_interrupt"
