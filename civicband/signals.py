"""The crawl's own signals (Scrapy's custom-signal idiom): notifications, never control."""

# summaries=list[dict], purged=int|None: once, when the crawl ends however it ends, after jobs
# were paused (empty when the database could not be read; Registry.outcomes then says what is
# known); purged is how many tombstones past CIVICBAND_TOMBSTONE_DAYS went (None: not purged).
jobs_closed = object()
# request=Request, why=str|None: a request starts ("backing off", "rate limited") or stops
# waiting in the retry middleware; the registry shows it in its job's progress.
request_waiting = object()
# lost=list[int], kept=list[int]: sent by civicband.store.Store when its lease connection was
# found dead and connected again: others hold the leases of `lost` now; those of `kept` were
# taken again, but another process may have claimed one of them in between (its token says).
leases_renewed = object()
