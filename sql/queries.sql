-- Named queries, loaded by civicband.db.query("name"). Parameters are always bound.
-- backfill_jobs and crawl_runs are written only through civicband/jobs.py; every write a lease
-- holder makes names its lease token and changes nothing once another process claimed the job.

-- ---- runs and the work queue (civicband/jobs.py) ------------------------------------------------

-- name: lock_queue
-- Opening runs and queueing their work take turns across processes (released at commit).
SELECT pg_advisory_xact_lock(%(class)s, 0)

-- name: newest_run
-- The newest run with these arguments, and whether a process of it is still alive.
SELECT r.id,
       EXISTS (SELECT 1 FROM pg_locks l
               WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
                 AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                 AND l.classid::bigint = %(class)s AND l.objid::bigint = r.id) AS live
FROM crawl_runs r WHERE r.run_key = %(run_key)s ORDER BY r.id DESC LIMIT 1

-- name: create_run
INSERT INTO crawl_runs (run_key, arguments) VALUES (%(run_key)s, %(arguments)s) RETURNING id

-- name: join_run
-- A shared session lock on the run: held while this process lives, so later ones can join.
SELECT pg_advisory_lock_shared(%(class)s, %(run_id)s::integer)

-- name: newest_jobs
-- Per wanted (site, type): its newest job, whether its lease or its run is alive, and whether
-- the mirror holds a completed pass (which makes a catch-up the default). The lease token seen
-- here fences what is then decided about the job (fail_abandoned, reopen_jobs).
WITH wanted AS (
    SELECT * FROM unnest(%(subdomains)s::text[], %(document_types)s::text[]) AS w (subdomain, document_type)
), held AS (
    SELECT l.classid::bigint AS class, l.objid::bigint AS key FROM pg_locks l
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
)
SELECT w.subdomain, w.document_type, j.id, j.status, j.run_id, j.mode, j.verify_status,
       j.lease_token,
       (j.last_cursor IS NOT NULL OR j.pages_exhausted_at IS NOT NULL OR j.pages_fetched > 0)
           AS has_progress,
       EXISTS (SELECT 1 FROM held h WHERE h.class = %(lease_class)s AND h.key = j.id) AS leased,
       EXISTS (SELECT 1 FROM held h WHERE h.class = %(run_class)s AND h.key = j.run_id) AS run_live,
       EXISTS (SELECT 1 FROM backfill_jobs c
               WHERE c.subdomain = w.subdomain AND c.document_type = w.document_type
                 AND c.status = 'completed' AND c.mode IN ('full', 'catchup')) AS has_pass
FROM wanted w
LEFT JOIN LATERAL (
    SELECT * FROM backfill_jobs b
    WHERE b.subdomain = w.subdomain AND b.document_type = w.document_type
    ORDER BY b.id DESC LIMIT 1
) j ON true

-- name: fail_abandoned
-- Only jobs still as they were seen (the same token; NULL: never claimed) whose lease nobody
-- holds now: a takeover, or a holder that took its lease back, since then is left alone.
UPDATE backfill_jobs j
   SET status = 'failed', last_error = 'abandoned: its process or connection died',
       lease_token = NULL, modified = now()
  FROM unnest(%(job_ids)s::bigint[], %(tokens)s::bigint[]) AS u (id, token)
 WHERE j.id = u.id AND j.status IN ('pending', 'running')
   AND j.lease_token IS NOT DISTINCT FROM u.token
   AND NOT EXISTS (
       SELECT 1 FROM pg_locks l
        WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
          AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
          AND l.classid::bigint = %(class)s AND l.objid::bigint = j.id)
RETURNING j.id

-- name: reopen_jobs
-- Continue jobs in this run from where they stopped (resume); `recrawl` starts their pass anew
-- (a failed verification is fixed by fetching again, not by counting again). Fenced as
-- fail_abandoned is: by the token seen, and by nobody holding the lease now.
UPDATE backfill_jobs j
   SET status = 'pending', run_id = %(run_id)s, mode = u.mode, lease_token = NULL,
       last_cursor = CASE WHEN u.recrawl THEN NULL ELSE j.last_cursor END,
       pages_exhausted_at = CASE WHEN u.recrawl THEN NULL ELSE j.pages_exhausted_at END,
       modified = now()
  FROM unnest(%(job_ids)s::bigint[], %(tokens)s::bigint[], %(modes)s::text[],
              %(recrawl)s::boolean[]) AS u (id, token, mode, recrawl)
 WHERE j.id = u.id AND j.status IN ('pending', 'running', 'failed', 'paused')
   AND j.lease_token IS NOT DISTINCT FROM u.token
   AND NOT EXISTS (
       SELECT 1 FROM pg_locks l
        WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
          AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
          AND l.classid::bigint = %(class)s AND l.objid::bigint = j.id)
RETURNING j.id

-- name: insert_jobs
INSERT INTO backfill_jobs (subdomain, document_type, status, mode, run_id)
SELECT subdomain, document_type, 'pending', mode, %(run_id)s
  FROM unnest(%(subdomains)s::text[], %(document_types)s::text[], %(modes)s::text[])
       AS u (subdomain, document_type, mode)
ON CONFLICT (subdomain, document_type) WHERE status IN ('pending', 'running') DO NOTHING
RETURNING id

-- name: claimable_jobs
-- Work of this run nobody holds: queued, or running while its holder's lease is gone.
SELECT j.id, j.status FROM backfill_jobs j
 WHERE j.run_id = %(run_id)s
   AND (j.status = 'pending'
        OR (j.status = 'running' AND NOT EXISTS (
            SELECT 1 FROM pg_locks l
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
               AND l.classid::bigint = %(class)s AND l.objid::bigint = j.id)))
 ORDER BY j.id
 LIMIT %(limit)s
 FOR UPDATE SKIP LOCKED

-- name: take_jobs
-- The claim: each job gets a new lease token, which every later write of its holder names.
UPDATE backfill_jobs
   SET status = 'running', lease_token = nextval('backfill_lease_tokens'), claimed_at = now(),
       modified = now()
 WHERE id = ANY(%(job_ids)s)
RETURNING id, lease_token, subdomain, document_type, mode, last_cursor,
          pages_exhausted_at IS NOT NULL AS exhausted, pages_fetched, batches_committed

-- name: busy_elsewhere
-- Jobs of this run other processes hold.
SELECT id, subdomain, document_type FROM backfill_jobs
 WHERE run_id = %(run_id)s AND status = 'running' AND NOT (id = ANY(%(mine)s))
 ORDER BY id

-- name: remaining_in_run
SELECT count(*) FILTER (WHERE status = 'pending') AS pending,
       count(*) FILTER (WHERE status = 'running') AS running
  FROM backfill_jobs WHERE run_id = %(run_id)s

-- name: try_lease
-- A session-level lock: held while this connection lives, released by PostgreSQL when it dies.
SELECT pg_try_advisory_lock(%(class)s, %(job_id)s::integer)

-- name: release_lease
SELECT pg_advisory_unlock(%(class)s, %(job_id)s::integer)

-- ---- fenced transitions of one job (civicband/jobs.py) --------------------------------------------

-- name: lock_job
-- The page transaction's first statement: the job row, locked, to check lease and order.
SELECT status, lease_token, last_cursor, pages_exhausted_at IS NOT NULL AS exhausted
  FROM backfill_jobs WHERE id = %(job_id)s FOR UPDATE

-- name: advance_job
UPDATE backfill_jobs
   SET last_cursor = %(cursor_out)s,
       pages_fetched = pages_fetched + %(fetched)s,
       pages_created = pages_created + %(created)s,
       pages_updated = pages_updated + %(updated)s,
       pages_changed = pages_changed + %(changed)s,
       pages_restored = pages_restored + %(restored)s,
       errors_encountered = errors_encountered + %(errors)s,
       pages_removed = pages_removed + %(removed)s,
       batches_committed = batches_committed + 1,
       pages_exhausted_at = CASE WHEN %(final)s THEN now() ELSE pages_exhausted_at END,
       modified = now()
 WHERE id = %(job_id)s AND lease_token = %(token)s AND status = 'running'

-- name: count_job
-- Counters of a catch-up's writes and of removals (no cursor).
UPDATE backfill_jobs
   SET pages_fetched = pages_fetched + %(fetched)s,
       pages_created = pages_created + %(created)s,
       pages_updated = pages_updated + %(updated)s,
       pages_changed = pages_changed + %(changed)s,
       pages_restored = pages_restored + %(restored)s,
       errors_encountered = errors_encountered + %(errors)s,
       pages_removed = pages_removed + %(removed)s,
       modified = now()
 WHERE id = %(job_id)s AND lease_token = %(token)s AND status = 'running'

-- name: restart_full
-- A catch-up that would cost more than a full pass becomes one.
UPDATE backfill_jobs
   SET mode = 'full', last_cursor = NULL, pages_exhausted_at = NULL, modified = now()
 WHERE id = %(job_id)s AND lease_token = %(token)s AND status = 'running'

-- name: fail_job
UPDATE backfill_jobs
   SET status = 'failed', last_error = %(last_error)s,
       retry_count = retry_count + %(retry_increment)s, modified = now()
 WHERE id = %(job_id)s AND lease_token = %(token)s AND status = 'running'

-- name: pause_jobs
UPDATE backfill_jobs j SET status = 'paused', modified = now()
  FROM unnest(%(job_ids)s::bigint[], %(tokens)s::bigint[]) AS u (id, token)
 WHERE j.id = u.id AND j.lease_token = u.token AND j.status = 'running'
RETURNING j.id

-- name: record_verdict
UPDATE backfill_jobs
   SET expected_count = %(expected)s, actual_count = %(actual)s, rejected_count = %(rejected)s,
       missing_count = %(missing)s, extra_count = %(extra)s, stale_count = %(stale)s,
       verify_status = %(verify_status)s, verify_method = %(verify_method)s,
       verified_at = now(), status = %(status)s,
       last_error = CASE WHEN %(status)s = 'failed' THEN %(message)s ELSE NULL END,
       modified = now()
 WHERE id = %(job_id)s AND lease_token = %(token)s AND status = 'running'

-- name: job_lease_state
-- After a fenced write changed nothing: whose is the job now, and in what status?
SELECT status, lease_token FROM backfill_jobs WHERE id = %(job_id)s

-- name: moved_leases
-- After the lease connection was renewed: jobs whose token is no longer the one we hold.
SELECT u.id FROM unnest(%(job_ids)s::bigint[], %(tokens)s::bigint[]) AS u (id, token)
  LEFT JOIN backfill_jobs j ON j.id = u.id
 WHERE j.lease_token IS DISTINCT FROM u.token
 ORDER BY u.id

-- name: job_summaries
SELECT id, subdomain, document_type, mode, status, pages_created, pages_updated,
       pages_changed, pages_restored, errors_encountered, pages_removed, verify_status, last_error
  FROM backfill_jobs WHERE id = ANY(%(job_ids)s) ORDER BY subdomain, document_type, id

-- ---- the mirror's pages (civicband/mirror.py) -----------------------------------------------------

-- name: staging_table
-- One page of source rows lands here by COPY before the set-based upserts; emptied at commit.
CREATE TEMP TABLE IF NOT EXISTS civicband_staging (
    id            text NOT NULL,
    meeting_name  text NOT NULL,
    meeting_date  date NOT NULL,
    page_number   integer,
    text          text,
    page_image    text,
    entities_json text,
    votes_json    text,
    content_fp    bigint NOT NULL
) ON COMMIT DELETE ROWS

-- name: copy_staging
-- Binary: the server reads each value as it is instead of parsing COPY's text format.
COPY civicband_staging (id, meeting_name, meeting_date, page_number, text, page_image,
                        entities_json, votes_json, content_fp) FROM STDIN (FORMAT BINARY)

-- name: upsert_documents
INSERT INTO meeting_documents (subdomain, document_type, meeting_name, meeting_date)
SELECT DISTINCT %(subdomain)s::text, %(document_type)s::text, meeting_name, meeting_date FROM civicband_staging
ON CONFLICT (subdomain, document_type, meeting_name, meeting_date) DO NOTHING

-- name: upsert_pages
-- Unchanged rows are not rewritten and keep their version; a written row takes a new one (run
-- under lock_versions). A row whose id has a tombstone comes back from it with its first-seen
-- time: restored, not created. (An unchanged row's nextval is spent unused: a gap, no version.)
WITH written AS (
    INSERT INTO meeting_pages AS p (subdomain, document_type, id, document_id, page_number, text,
                                    page_image, entities_json, votes_json, content_fp, version,
                                    created)
    SELECT %(subdomain)s::text, %(document_type)s::text, s.id, d.id, s.page_number, s.text, s.page_image,
           s.entities_json, s.votes_json, s.content_fp, nextval('meeting_page_versions'),
           coalesce(t.created, now())
    FROM civicband_staging s
    LEFT JOIN page_tombstones t
      ON t.subdomain = %(subdomain)s AND t.document_type = %(document_type)s AND t.id = s.id
    -- One index probe per staging row (OFFSET 0 keeps the subquery from being flattened into a
    -- join): a hash join would read every document of the site for each page, a cost that
    -- grows with the site.
    CROSS JOIN LATERAL (
        SELECT d.id FROM meeting_documents d
        WHERE d.subdomain = %(subdomain)s AND d.document_type = %(document_type)s
          AND d.meeting_name = s.meeting_name AND d.meeting_date = s.meeting_date
        OFFSET 0
    ) d
    ON CONFLICT (subdomain, document_type, id) DO UPDATE
       SET document_id = EXCLUDED.document_id, page_number = EXCLUDED.page_number,
           text = EXCLUDED.text, page_image = EXCLUDED.page_image,
           entities_json = EXCLUDED.entities_json, votes_json = EXCLUDED.votes_json,
           content_fp = EXCLUDED.content_fp, version = EXCLUDED.version, modified = now()
     WHERE (p.document_id, p.page_number, p.text, p.page_image, p.entities_json, p.votes_json,
            p.content_fp)
           IS DISTINCT FROM (EXCLUDED.document_id, EXCLUDED.page_number, EXCLUDED.text,
                             EXCLUDED.page_image, EXCLUDED.entities_json, EXCLUDED.votes_json,
                             EXCLUDED.content_fp)
    RETURNING (xmax = 0) AS created, p.id, p.version
), back AS (
    DELETE FROM page_tombstones t USING civicband_staging s
     WHERE t.subdomain = %(subdomain)s AND t.document_type = %(document_type)s AND t.id = s.id
    RETURNING t.id
)
SELECT count(*) FILTER (WHERE w.created AND b.id IS NULL) AS created,
       count(*) FILTER (WHERE NOT w.created) AS changed,
       count(*) FILTER (WHERE w.created AND b.id IS NOT NULL) AS restored,
       max(w.version) AS version
FROM written w LEFT JOIN back b ON b.id = w.id

-- name: delete_orphan_documents
-- Documents whose pages all moved away (their meeting or date changed at the source).
DELETE FROM meeting_documents d
WHERE d.subdomain = %(subdomain)s AND d.document_type = %(document_type)s
  AND NOT EXISTS (SELECT 1 FROM meeting_pages p WHERE p.document_id = d.id)

-- name: unreject_stored
-- A row stored now is rejected no more: it was fixed at the source under the same id. Not
-- a row whose invalid id only looks like it once shown, nor a twin this page rejects again.
DELETE FROM rejected_rows r USING civicband_staging s
 WHERE r.subdomain = %(subdomain)s AND r.document_type = %(document_type)s AND r.row_id = s.id
   AND r.reason <> %(invalid_id)s AND r.row_id <> ALL(%(rejected_ids)s::text[])

-- name: reject_row
-- The same bad row met again is one rejection; an id has one rejection, its newest.
WITH older AS (
    DELETE FROM rejected_rows
     WHERE subdomain = %(subdomain)s AND document_type = %(document_type)s
       AND %(row_id)s::text IS NOT NULL AND row_id = %(row_id)s::text AND raw_md5 <> md5(%(raw)s)
       -- an invalid id is shown escaped and cut: rows that read the same are still two rows
       AND %(reason)s <> %(invalid_id)s AND reason <> %(invalid_id)s
)
INSERT INTO rejected_rows (subdomain, document_type, row_id, reason, raw, job_id, content_fp,
                           copies)
VALUES (%(subdomain)s, %(document_type)s, %(row_id)s, %(reason)s, %(raw)s, %(job_id)s,
        %(content_fp)s, %(copies)s)
ON CONFLICT (subdomain, document_type, raw_md5) DO UPDATE
   SET reason = EXCLUDED.reason, row_id = EXCLUDED.row_id, job_id = EXCLUDED.job_id,
       content_fp = EXCLUDED.content_fp, copies = EXCLUDED.copies, modified = now()

-- name: remember_seen
-- The ids this pass has seen, for the sweep when the pass ends: one row for the page.
INSERT INTO job_seen_pages (job_id, ids) SELECT %(job_id)s, array_agg(id) FROM civicband_staging

-- name: seen_digest
-- What a full pass saw, per hex bucket, summed as the source's digest sums ids: the ids it
-- stored and the rejections it met again. A bucket whose sums equal the source's was seen whole.
WITH ids AS (
    -- DISTINCT: an id two pages of the pass brought counts once, as in a table keyed by id.
    SELECT DISTINCT id, 1 AS copies FROM job_seen_pages, unnest(ids) AS id
     WHERE job_id = %(job_id)s
    UNION ALL
    SELECT row_id, copies FROM rejected_rows
     WHERE subdomain = %(subdomain)s AND document_type = %(document_type)s
       AND job_id = %(job_id)s AND reason <> %(invalid_id)s
)
SELECT substr(id, 1, 2) AS bucket, sum(copies) AS n,
       sum(copies * ('x' || substr(id, 1, 6))::bit(24)::int) AS hi,
       sum(copies * ('x' || substr(id, 7, 6))::bit(24)::int) AS lo
FROM ids WHERE id ~ '^[0-9a-f]{12}$' GROUP BY 1

-- name: sweep_preview
-- What the shrink guard weighs: pages here, and those a sweep of these buckets would remove.
-- Unseen pages by EXCEPT, a set operation: the seen ids are an array per page, with no index to
-- probe, and a nested loop over them (a plan chosen before any statistics) is quadratic.
SELECT (SELECT count(*) FROM meeting_pages
         WHERE subdomain = %(subdomain)s AND document_type = %(document_type)s) AS local,
       (SELECT count(*) FROM (
            SELECT p.id FROM meeting_pages p
             WHERE p.subdomain = %(subdomain)s AND p.document_type = %(document_type)s
               AND p.id ~ '^[0-9a-f]{12}$' AND substr(p.id, 1, 2) = ANY(%(buckets)s::text[])
            EXCEPT
            SELECT unnest(ids) FROM job_seen_pages WHERE job_id = %(job_id)s) unseen) AS unseen

-- name: sweep_unseen
-- After a complete pass: pages of the buckets it saw whole that it did not see (sites are
-- rebuilt from scratch). A bucket it saw short keeps every page: that proves no absence.
-- They go through delete_pages, in the same transaction.
SELECT p.id FROM meeting_pages p
 WHERE p.subdomain = %(subdomain)s AND p.document_type = %(document_type)s
   AND p.id ~ '^[0-9a-f]{12}$' AND substr(p.id, 1, 2) = ANY(%(buckets)s::text[])
EXCEPT
SELECT unnest(ids) FROM job_seen_pages WHERE job_id = %(job_id)s

-- name: sweep_rejections
-- After a complete pass: rejections of the buckets it saw whole that it did not meet again.
-- A row rejected for its id is of the `~` bucket at the source, which a pass never proves.
DELETE FROM rejected_rows
WHERE subdomain = %(subdomain)s AND document_type = %(document_type)s
  AND job_id IS DISTINCT FROM %(job_id)s AND reason <> %(invalid_id)s
  AND row_id ~ '^[0-9a-f]{12}$' AND substr(row_id, 1, 2) = ANY(%(buckets)s::text[])

-- name: sweepable
-- Read while the source's digest is on its way: the hex buckets where a sweep would remove
-- something (a page this pass did not see, a rejection it did not meet again). A sweep weighed
-- against the digest is needed only where one of these is seen whole.
SELECT DISTINCT substr(id, 1, 2) FROM (
    (SELECT id FROM meeting_pages
      WHERE subdomain = %(subdomain)s AND document_type = %(document_type)s
        AND id ~ '^[0-9a-f]{12}$'
     EXCEPT
     SELECT unnest(ids) FROM job_seen_pages WHERE job_id = %(job_id)s)
    UNION ALL
    SELECT row_id FROM rejected_rows
     WHERE subdomain = %(subdomain)s AND document_type = %(document_type)s
       AND job_id IS DISTINCT FROM %(job_id)s AND reason <> %(invalid_id)s
       AND row_id ~ '^[0-9a-f]{12}$'
) unswept(id)

-- name: forget_seen
-- The one delete of job_seen_pages: after a verdict, and when a pass starts anew.
DELETE FROM job_seen_pages WHERE job_id = ANY(%(job_ids)s)

-- name: local_counts
-- Rejected rows count every identical copy the source holds (NULL-id twins are one rejection).
SELECT (SELECT count(*) FROM meeting_pages
        WHERE subdomain = %(subdomain)s AND document_type = %(document_type)s) AS actual,
       (SELECT coalesce(sum(copies), 0) FROM rejected_rows
        WHERE subdomain = %(subdomain)s AND document_type = %(document_type)s) AS rejected

-- name: local_digest
-- The mirror's side of civicband/digest.py and bisect.py: pages plus rejected rows, per id
-- bucket of `depth` hex digits.
WITH ids AS (
    SELECT id, content_fp, 1 AS copies FROM meeting_pages
     WHERE subdomain = %(subdomain)s AND document_type = %(document_type)s
    UNION ALL
    SELECT r.row_id, r.content_fp, r.copies FROM rejected_rows r
     WHERE r.subdomain = %(subdomain)s AND r.document_type = %(document_type)s
       -- A row beside a page of the same id is a source row of its own when it is the page's
       -- twin or its invalid id only reads as the page's; else the page stands for that id.
       AND (r.reason = ANY(%(own_rows)s::text[]) OR NOT EXISTS (
            SELECT 1 FROM meeting_pages p
             WHERE p.subdomain = r.subdomain AND p.document_type = r.document_type
               AND p.id = r.row_id))
), classed AS (
    SELECT id, content_fp, copies, coalesce(id ~ '^[0-9a-f]{12}$', false) AS hex FROM ids
)
SELECT CASE WHEN hex THEN substr(id, 1, %(depth)s) ELSE '~' END AS bucket, sum(copies) AS n,
       coalesce(sum(copies * ('x' || substr(id, 1, 6))::bit(24)::int) FILTER (WHERE hex), 0) AS hi,
       coalesce(sum(copies * ('x' || substr(id, 7, 6))::bit(24)::int) FILTER (WHERE hex), 0) AS lo,
       coalesce(sum(copies * content_fp), 0)::bigint AS fp
FROM classed
-- Within some buckets only (a bisection's sub-buckets), or the whole (site, type) when NULL.
WHERE %(within)s::text[] IS NULL
   OR (hex AND substr(id, 1, %(within_depth)s) = ANY(%(within)s::text[]))
GROUP BY 1

-- name: local_listing
-- Pages of some hex buckets (all as deep): id and fingerprint.
SELECT id, content_fp FROM meeting_pages
 WHERE subdomain = %(subdomain)s AND document_type = %(document_type)s
   AND id ~ '^[0-9a-f]{12}$' AND substr(id, 1, %(depth)s) = ANY(%(buckets)s)

-- name: rejected_listing
SELECT row_id, content_fp FROM rejected_rows
 WHERE subdomain = %(subdomain)s AND document_type = %(document_type)s
   AND row_id ~ '^[0-9a-f]{12}$' AND substr(row_id, 1, %(depth)s) = ANY(%(buckets)s)

-- name: local_other
-- Pages whose ids are not 12 lowercase hex digits.
SELECT id, content_fp FROM meeting_pages
 WHERE subdomain = %(subdomain)s AND document_type = %(document_type)s
   AND NOT coalesce(id ~ '^[0-9a-f]{12}$', false)

-- name: rejected_other
-- Rejections of rows whose ids are NULL or not 12 lowercase hex digits.
SELECT row_id, raw_md5 FROM rejected_rows
 WHERE subdomain = %(subdomain)s AND document_type = %(document_type)s
   AND NOT coalesce(row_id ~ '^[0-9a-f]{12}$', false)

-- name: exact_values
-- exact=true: the columns the id does not hash, of the pages one source answer lists.
SELECT id, page_image, entities_json, votes_json FROM meeting_pages
 WHERE subdomain = %(subdomain)s AND document_type = %(document_type)s
   AND id = ANY(%(ids)s::text[])

-- name: exact_rejected
-- exact=true: which of those ids are rejected rows (present, judged by the digest).
SELECT DISTINCT row_id FROM rejected_rows
 WHERE subdomain = %(subdomain)s AND document_type = %(document_type)s
   AND row_id = ANY(%(ids)s::text[])

-- name: hex_page_count
SELECT count(*) FROM meeting_pages
 WHERE subdomain = %(subdomain)s AND document_type = %(document_type)s
   AND id ~ '^[0-9a-f]{12}$'

-- name: delete_pages
-- Pages a complete listing lacks, or whose id's row now arrives malformed (its rejection
-- replaces it), become tombstones with new versions (run under lock_versions).
WITH gone AS (
    DELETE FROM meeting_pages
    WHERE subdomain = %(subdomain)s AND document_type = %(document_type)s
      AND id = ANY(%(ids)s::text[])
    RETURNING *
), stoned AS (
    INSERT INTO page_tombstones AS t (subdomain, document_type, id, version, removed, created,
                                      meeting_name, meeting_date, page_number, text, page_image,
                                      entities_json, votes_json, content_fp)
    SELECT g.subdomain, g.document_type, g.id, nextval('meeting_page_versions'), now(),
           g.created, d.meeting_name, d.meeting_date, g.page_number, g.text, g.page_image,
           g.entities_json, g.votes_json, g.content_fp
      FROM gone g JOIN meeting_documents d ON d.id = g.document_id
    ON CONFLICT (subdomain, document_type, id) DO UPDATE
       SET version = EXCLUDED.version, removed = EXCLUDED.removed, created = EXCLUDED.created,
           meeting_name = EXCLUDED.meeting_name, meeting_date = EXCLUDED.meeting_date,
           page_number = EXCLUDED.page_number, text = EXCLUDED.text,
           page_image = EXCLUDED.page_image, entities_json = EXCLUDED.entities_json,
           votes_json = EXCLUDED.votes_json, content_fp = EXCLUDED.content_fp
    RETURNING t.version
)
SELECT count(*) AS removed, max(version) AS version FROM stoned

-- ---- the change feed (civicband/mirror.py, civicband/commands/changes.py) ------------------------

-- name: lock_versions
-- Held until commit by every transaction that takes versions, taken right before its first
-- version-taking statement: versions are then handed out in commit order, so a snapshot that
-- sees version V sees every lower one (a reader never skips a change committed late).
SELECT pg_advisory_xact_lock(%(class)s, 0)

-- name: notify_changes
-- Delivered at commit, only if the transaction commits: the highest version it took.
SELECT pg_notify('civicband_changes', %(version)s::text)

-- name: known_rows
-- Of these ids, those whose text the mirror holds, as a page or as a removed page's tombstone:
-- the id hashes kind, meeting, date, page and text, so only the other columns need fetching.
SELECT p.id, d.meeting_name, d.meeting_date, p.page_number, p.text
  FROM meeting_pages p JOIN meeting_documents d ON d.id = p.document_id
 WHERE p.subdomain = %(subdomain)s AND p.document_type = %(document_type)s
   AND p.id = ANY(%(ids)s::text[])
UNION ALL
SELECT id, meeting_name, meeting_date, page_number, text FROM page_tombstones t
 WHERE subdomain = %(subdomain)s AND document_type = %(document_type)s
   AND id = ANY(%(ids)s::text[])
   AND NOT EXISTS (SELECT 1 FROM meeting_pages p WHERE p.subdomain = t.subdomain
                      AND p.document_type = t.document_type AND p.id = t.id)

-- name: purge_tombstones
-- Tombstones past CIVICBAND_TOMBSTONE_DAYS: consumers had that long to read the removal.
DELETE FROM page_tombstones WHERE removed < now() - %(days)s::float8 * interval '1 day'

-- name: changes
-- `scrapy changes`: every page whose newest change is above a version, in version order; the
-- two index scans on version merge, so a server-side cursor streams them in constant memory.
SELECT * FROM (
    SELECT p.version, 'upsert' AS op, p.subdomain, p.document_type, p.id,
           d.meeting_name AS meeting, d.meeting_date AS date, p.page_number AS page, p.text,
           p.page_image, p.entities_json, p.votes_json, p.created AS first_seen,
           p.modified AS changed, NULL::timestamptz AS removed
      FROM meeting_pages p JOIN meeting_documents d ON d.id = p.document_id
     WHERE p.version > %(since)s::bigint
       AND (%(subdomain)s::text IS NULL OR p.subdomain = %(subdomain)s::text)
       AND (%(document_type)s::text IS NULL OR p.document_type = %(document_type)s::text)
    UNION ALL
    SELECT t.version, 'delete', t.subdomain, t.document_type, t.id, NULL, NULL, NULL, NULL,
           NULL, NULL, NULL, NULL, NULL, t.removed
      FROM page_tombstones t
     WHERE t.version > %(since)s::bigint
       AND (%(subdomain)s::text IS NULL OR t.subdomain = %(subdomain)s::text)
       AND (%(document_type)s::text IS NULL OR t.document_type = %(document_type)s::text)
) feed
ORDER BY version
LIMIT %(limit)s::bigint

-- name: delete_rejections
DELETE FROM rejected_rows
WHERE subdomain = %(subdomain)s AND document_type = %(document_type)s
  AND (row_id = ANY(%(row_ids)s) OR raw_md5 = ANY(%(raw_md5s)s))

-- ---- municipalities and the index -------------------------------------------------------------

-- name: municipality_subdomains
SELECT subdomain FROM municipalities ORDER BY subdomain

-- name: known_subdomains
SELECT subdomain FROM municipalities WHERE subdomain = ANY(%(subdomains)s)

-- name: source_facts
SELECT subdomain, source_dialect FROM municipalities
 WHERE subdomain = ANY(%(subdomains)s) AND source_dialect IS NOT NULL

-- name: remember_source
UPDATE municipalities SET source_dialect = %(dialect)s
 WHERE subdomain = %(subdomain)s AND source_dialect IS DISTINCT FROM %(dialect)s

-- name: ensure_municipality
INSERT INTO municipalities (subdomain) VALUES (%(subdomain)s) ON CONFLICT (subdomain) DO NOTHING

-- name: upsert_municipalities
-- civicband-sites: every site of civic.band's index in one statement; added = inserts.
-- A country the index does not show keeps what the mirror knew.
WITH listed AS (
    SELECT * FROM unnest(%(subdomains)s::text[], %(names)s::text[], %(states)s::text[],
                         %(countries)s::text[], %(kinds)s::text[], %(pages)s::bigint[],
                         %(last_updated)s::text[])
           AS l (subdomain, name, state, country, kind, pages, last_updated)
), written AS (
    INSERT INTO municipalities AS m (subdomain, name, state, country, kind, pages, last_updated)
    SELECT subdomain, name, state, country, kind, pages, last_updated FROM listed
    ON CONFLICT (subdomain) DO UPDATE
       SET name = EXCLUDED.name, state = EXCLUDED.state,
           country = COALESCE(EXCLUDED.country, m.country), kind = EXCLUDED.kind,
           pages = EXCLUDED.pages, last_updated = EXCLUDED.last_updated, modified = now()
    RETURNING (xmax = 0) AS added
)
SELECT count(*) FILTER (WHERE added) AS added, count(*) FILTER (WHERE NOT added) AS updated
FROM written

-- name: unlisted_municipalities
-- Sites the mirror knows that civic.band's index no longer lists: reported, never deleted.
SELECT subdomain FROM municipalities WHERE NOT (subdomain = ANY(%(subdomains)s::text[]))
ORDER BY subdomain

-- name: list_jobs
-- `scrapy jobs`: newest first, each filter applied only when given.
SELECT id, subdomain, document_type, mode, status, pages_created, pages_updated, pages_changed,
       pages_restored, pages_removed, errors_encountered, expected_count, actual_count, stale_count, verify_status,
       verify_method, verified_at, created, modified, last_error
FROM backfill_jobs
WHERE (%(status)s::text IS NULL OR status = %(status)s::text)
  AND (%(document_type)s::text IS NULL OR document_type = %(document_type)s::text)
  AND (%(subdomain)s::text IS NULL OR subdomain = %(subdomain)s::text)
ORDER BY id DESC
LIMIT %(limit)s::bigint

-- name: index_cross_check
-- civic.band's index lists pages = agendas + minutes: compare with the newest source counts.
SELECT m.pages,
       (SELECT expected_count FROM backfill_jobs
         WHERE subdomain = m.subdomain AND document_type = 'agenda' AND expected_count IS NOT NULL
         ORDER BY id DESC LIMIT 1) AS agendas,
       (SELECT expected_count FROM backfill_jobs
         WHERE subdomain = m.subdomain AND document_type = 'minutes' AND expected_count IS NOT NULL
         ORDER BY id DESC LIMIT 1) AS minutes
FROM municipalities m WHERE m.subdomain = %(subdomain)s
