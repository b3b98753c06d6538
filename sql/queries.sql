-- Named queries, loaded by civicband.db.query("name"). Parameters are always bound.

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
    votes_json    text
) ON COMMIT DELETE ROWS

-- name: copy_staging
-- Binary: the server reads each value as it is instead of parsing COPY's text format.
COPY civicband_staging (id, meeting_name, meeting_date, page_number, text, page_image,
                        entities_json, votes_json) FROM STDIN (FORMAT BINARY)

-- name: claim_cursor
-- Locks the job row and proves this page follows the last committed one, from the lease holder.
SELECT status, last_cursor IS NOT DISTINCT FROM %(cursor_in)s AS in_order,
       EXISTS (SELECT 1 FROM pg_locks
               WHERE locktype = 'advisory' AND classid::bigint = %(class)s
                 AND objid::bigint = %(job_id)s
                 AND objsubid = 2 AND pid = %(lease_pid)s AND granted) AS leased
FROM backfill_jobs WHERE id = %(job_id)s FOR UPDATE

-- name: upsert_documents
INSERT INTO meeting_documents (subdomain, document_type, meeting_name, meeting_date)
SELECT DISTINCT %(subdomain)s::text, %(document_type)s::text, meeting_name, meeting_date FROM civicband_staging
ON CONFLICT (subdomain, document_type, meeting_name, meeting_date) DO NOTHING

-- name: upsert_pages
-- Unchanged rows are not rewritten; created = rows whose insert did not conflict.
WITH written AS (
    INSERT INTO meeting_pages AS p (subdomain, document_type, id, document_id, page_number, text,
                                    page_image, entities_json, votes_json)
    SELECT %(subdomain)s::text, %(document_type)s::text, s.id, d.id, s.page_number, s.text, s.page_image,
           s.entities_json, s.votes_json
    FROM civicband_staging s
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
           modified = now()
     WHERE (p.document_id, p.page_number, p.text, p.page_image, p.entities_json, p.votes_json)
           IS DISTINCT FROM (EXCLUDED.document_id, EXCLUDED.page_number, EXCLUDED.text,
                             EXCLUDED.page_image, EXCLUDED.entities_json, EXCLUDED.votes_json)
    RETURNING (xmax = 0) AS created
)
SELECT count(*) FILTER (WHERE created) AS created, count(*) FILTER (WHERE NOT created) AS changed
FROM written

-- name: delete_orphan_documents
-- Documents whose pages all moved away (their meeting or date changed at the source).
DELETE FROM meeting_documents d
WHERE d.subdomain = %(subdomain)s AND d.document_type = %(document_type)s
  AND NOT EXISTS (SELECT 1 FROM meeting_pages p WHERE p.document_id = d.id)

-- name: reject_row
INSERT INTO rejected_rows (subdomain, document_type, row_id, reason, raw, job_id)
VALUES (%(subdomain)s, %(document_type)s, %(row_id)s, %(reason)s, %(raw)s, %(job_id)s)
ON CONFLICT (subdomain, document_type, raw_md5) DO UPDATE
   SET reason = EXCLUDED.reason, row_id = EXCLUDED.row_id, job_id = EXCLUDED.job_id,
       modified = now()

-- name: advance_job
UPDATE backfill_jobs
   SET last_cursor = %(cursor_out)s,
       pages_fetched = pages_fetched + %(fetched)s,
       pages_created = pages_created + %(created)s,
       pages_updated = pages_updated + %(updated)s,
       errors_encountered = errors_encountered + %(errors)s,
       batches_committed = batches_committed + 1,
       modified = now()
 WHERE id = %(job_id)s

-- name: municipality_subdomains
SELECT subdomain FROM municipalities ORDER BY subdomain

-- name: known_subdomains
SELECT subdomain FROM municipalities WHERE subdomain = ANY(%(subdomains)s)

-- name: ensure_municipality
INSERT INTO municipalities (subdomain) VALUES (%(subdomain)s) ON CONFLICT (subdomain) DO NOTHING

-- name: create_job
INSERT INTO backfill_jobs (subdomain, document_type, status)
VALUES (%(subdomain)s, %(document_type)s, 'running')
RETURNING id

-- name: finish_job
UPDATE backfill_jobs
   SET status = %(status)s, last_error = %(last_error)s,
       retry_count = retry_count + %(retry_increment)s, modified = now()
 WHERE id = %(job_id)s AND status = 'running'

-- name: lock_site_type
-- Claimers of one (site, type) take turns, across processes, until their transaction ends.
SELECT pg_advisory_xact_lock(%(class)s, hashtext(%(subdomain)s || '/' || %(document_type)s))

-- name: newest_job
SELECT id, status, last_cursor, pages_exhausted_at IS NOT NULL AS exhausted FROM backfill_jobs
WHERE subdomain = %(subdomain)s AND document_type = %(document_type)s
ORDER BY id DESC LIMIT 1
FOR UPDATE

-- name: try_lease
-- A session-level lock: held while this connection lives, released by PostgreSQL when it dies.
SELECT pg_try_advisory_lock(%(class)s, %(job_id)s::integer)

-- name: release_lease
SELECT pg_advisory_unlock(%(class)s, %(job_id)s::integer)

-- name: resume_job
UPDATE backfill_jobs SET status = 'running', modified = now() WHERE id = %(job_id)s

-- name: abandon_job
UPDATE backfill_jobs
   SET status = 'failed', last_error = 'abandoned: its process or connection died', modified = now()
 WHERE id = %(job_id)s AND status = 'running'

-- name: pause_jobs
UPDATE backfill_jobs SET status = 'paused', modified = now()
 WHERE id = ANY(%(job_ids)s) AND status = 'running'

-- name: remember_seen
-- The ids this pass has seen, for the sweep when the pass ends.
INSERT INTO job_seen_ids (job_id, id) SELECT %(job_id)s, id FROM civicband_staging
ON CONFLICT DO NOTHING

-- name: mark_exhausted
UPDATE backfill_jobs SET pages_exhausted_at = now(), modified = now() WHERE id = %(job_id)s

-- name: sweep_unseen
-- After a complete pass: pages the source no longer has (sites are rebuilt from scratch).
DELETE FROM meeting_pages p
WHERE p.subdomain = %(subdomain)s AND p.document_type = %(document_type)s
  AND NOT EXISTS (SELECT 1 FROM job_seen_ids s WHERE s.job_id = %(job_id)s AND s.id = p.id)

-- name: forget_seen
DELETE FROM job_seen_ids WHERE job_id = %(job_id)s

-- name: local_counts
SELECT (SELECT count(*) FROM meeting_pages
        WHERE subdomain = %(subdomain)s AND document_type = %(document_type)s) AS actual,
       (SELECT count(*) FROM rejected_rows
        WHERE subdomain = %(subdomain)s AND document_type = %(document_type)s) AS rejected

-- name: record_verification
UPDATE backfill_jobs
   SET expected_count = %(expected)s, actual_count = %(actual)s, rejected_count = %(rejected)s,
       missing_count = %(missing)s, verify_status = %(verify_status)s, verified_at = now(),
       status = %(status)s,
       last_error = CASE WHEN %(status)s = 'failed' THEN %(message)s ELSE NULL END,
       modified = now()
 WHERE id = %(job_id)s AND status = 'running'

-- name: local_buckets
-- Local pages plus rejected rows per id prefix, to compare with the source's own buckets.
SELECT bucket, sum(n)::bigint AS n FROM (
    SELECT substr(id, 1, 2) AS bucket, count(*) AS n FROM meeting_pages
     WHERE subdomain = %(subdomain)s AND document_type = %(document_type)s GROUP BY 1
    UNION ALL
    SELECT substr(row_id, 1, 2), count(*) FROM rejected_rows
     WHERE subdomain = %(subdomain)s AND document_type = %(document_type)s
       AND row_id IS NOT NULL GROUP BY 1
) counts GROUP BY bucket

-- name: local_ids_in_bucket
SELECT id FROM meeting_pages
WHERE subdomain = %(subdomain)s AND document_type = %(document_type)s
  AND id >= %(low)s AND id < %(high)s

-- name: rejected_ids_in_bucket
SELECT row_id FROM rejected_rows
WHERE subdomain = %(subdomain)s AND document_type = %(document_type)s
  AND row_id >= %(low)s AND row_id < %(high)s

-- name: delete_pages
DELETE FROM meeting_pages
WHERE subdomain = %(subdomain)s AND document_type = %(document_type)s AND id = ANY(%(ids)s)

-- name: count_repair
UPDATE backfill_jobs
   SET pages_fetched = pages_fetched + %(fetched)s,
       pages_created = pages_created + %(created)s,
       pages_updated = pages_updated + %(updated)s,
       errors_encountered = errors_encountered + %(errors)s,
       modified = now()
 WHERE id = %(job_id)s

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
SELECT id, subdomain, document_type, status, pages_created, pages_updated, errors_encountered,
       expected_count, actual_count, verify_status, verified_at, created, modified, last_error
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
