-- One owner for job state: runs shared by processes, fenced leases, job modes, set-based
-- verification, content fingerprints for the columns the id does not hash.

-- A run: the (site, type) work one set of arguments asked for, shared by every process started
-- with those arguments while one of them is alive (its processes hold a shared advisory lock).
CREATE TABLE crawl_runs (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_key   text NOT NULL,
    arguments jsonb NOT NULL,
    created   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX crawl_runs_key_idx ON crawl_runs (run_key, id DESC);

-- What each site has shown of itself, so a run does not ask again: its Datasette line (0.65's
-- SQL lives elsewhere) and whether it lacks the JSON columns (older sites).
ALTER TABLE municipalities ADD COLUMN source_dialect text;
ALTER TABLE municipalities ADD COLUMN source_legacy boolean;

-- Every claim takes a new token; every write by a holder names it (fencing).
CREATE SEQUENCE backfill_lease_tokens;

ALTER TABLE backfill_jobs ADD COLUMN run_id bigint REFERENCES crawl_runs (id);
ALTER TABLE backfill_jobs ADD COLUMN lease_token bigint;
ALTER TABLE backfill_jobs ADD COLUMN mode text NOT NULL DEFAULT 'full'
    CHECK (mode IN ('full', 'catchup', 'verify'));
ALTER TABLE backfill_jobs ADD COLUMN extra_count bigint;
ALTER TABLE backfill_jobs ADD COLUMN stale_count bigint;
ALTER TABLE backfill_jobs ADD COLUMN pages_removed bigint NOT NULL DEFAULT 0;
ALTER TABLE backfill_jobs ADD COLUMN claimed_at timestamptz;

-- At most one open (pending or running) job per (site, type): a queued job is work nobody else
-- may start twice.
DROP INDEX backfill_jobs_one_running_idx;
CREATE UNIQUE INDEX backfill_jobs_one_open_idx
    ON backfill_jobs (subdomain, document_type) WHERE status IN ('pending', 'running');
CREATE INDEX backfill_jobs_run_idx ON backfill_jobs (run_id, status);

-- What the source's SQLite computes from page_image, entities_json and votes_json (see
-- civicband/digest.py), kept per page: PostgreSQL cannot recompute it once NULs are removed.
ALTER TABLE meeting_pages ADD COLUMN content_fp bigint NOT NULL DEFAULT 0;
ALTER TABLE rejected_rows ADD COLUMN content_fp bigint NOT NULL DEFAULT 0;

-- Pages stored before this migration: the same formula in PostgreSQL (their NULs are gone, so
-- a page that had one will look changed once and be fetched again).
UPDATE meeting_pages SET content_fp =
    (SELECT coalesce(sum(w * CASE WHEN v IS NULL THEN 0 WHEN l = 0 THEN 1 ELSE
         1 + 7 * l
         + 101 * ascii(substr(v, 1 + length(v) / 5, 1))
         + 211 * ascii(substr(v, 1 + 2 * length(v) / 5, 1))
         + 307 * ascii(substr(v, 1 + 3 * length(v) / 5, 1))
         + 401 * ascii(substr(v, 1 + 4 * length(v) / 5, 1))
         + 1009 * (l - length(replace(v, 'a', '')))
         + 2003 * (l - length(replace(v, 'e', '')))
         + 3001 * (l - length(replace(v, 'i', '')))
         + 4001 * (l - length(replace(v, 'o', ''))) END), 0)
     FROM (VALUES (page_image, 1::bigint), (entities_json, 3), (votes_json, 7)) AS c (v, w),
         LATERAL (SELECT length(v)::bigint AS l) AS n);
