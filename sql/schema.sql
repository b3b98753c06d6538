-- The whole current schema: what every migration in migrations/ adds up to.
-- A fresh database gets this file; an existing one gets the migrations it lacks.
-- tests/test_schema.py checks that the two agree.

CREATE TABLE municipalities (
    subdomain  text PRIMARY KEY,
    name       text,
    state      text,
    country    text,
    kind       text,
    pages      bigint,
    last_updated text,
    created    timestamptz NOT NULL DEFAULT now(),
    modified   timestamptz NOT NULL DEFAULT now(),
    -- which Datasette line the site speaks (its columns are learned from every answer)
    source_dialect text,
    -- no longer used (0006): kept for workers of the previous version sharing the database
    source_legacy  boolean
);

CREATE TABLE meeting_documents (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subdomain     text NOT NULL REFERENCES municipalities (subdomain),
    document_type text NOT NULL CHECK (document_type IN ('agenda', 'minutes')),
    meeting_name  text NOT NULL,
    meeting_date  date NOT NULL,
    created       timestamptz NOT NULL DEFAULT now(),
    modified      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (subdomain, document_type, meeting_name, meeting_date)
);

CREATE TABLE meeting_pages (
    subdomain     text NOT NULL,
    document_type text NOT NULL CHECK (document_type IN ('agenda', 'minutes')),
    id            text NOT NULL,
    document_id   bigint NOT NULL REFERENCES meeting_documents (id),
    page_number   integer,
    text          text,
    page_image    text,
    entities_json text,
    votes_json    text,
    created       timestamptz NOT NULL DEFAULT now(),
    modified      timestamptz NOT NULL DEFAULT now(),
    -- what the source's SQLite computes from page_image, entities_json, votes_json (digest.py)
    content_fp    bigint NOT NULL DEFAULT 0,
    -- the change feed (0007): the page's newest change, from meeting_page_versions
    version       bigint NOT NULL,
    PRIMARY KEY (subdomain, document_type, id)
);
CREATE INDEX meeting_pages_document_id_idx ON meeting_pages (document_id);

-- One sequence for every change to a page of the mirror (created, changed, removed, restored).
-- Taken only under the versions lock (civicband/mirror.py), so versions follow commit order.
CREATE SEQUENCE meeting_page_versions;
CREATE INDEX meeting_pages_version_idx ON meeting_pages (version);

-- Removed pages, with their content: the feed's deletes, and what a page that comes back is
-- restored from (first-seen time kept, no text fetched). Purged after CIVICBAND_TOMBSTONE_DAYS.
CREATE TABLE page_tombstones (
    subdomain     text NOT NULL,
    document_type text NOT NULL CHECK (document_type IN ('agenda', 'minutes')),
    id            text NOT NULL,
    version       bigint NOT NULL,
    removed       timestamptz NOT NULL DEFAULT now(),
    created       timestamptz NOT NULL,
    meeting_name  text NOT NULL,
    meeting_date  date NOT NULL,
    page_number   integer,
    text          text,
    page_image    text,
    entities_json text,
    votes_json    text,
    content_fp    bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (subdomain, document_type, id)
);
CREATE INDEX page_tombstones_version_idx ON page_tombstones (version);
CREATE INDEX page_tombstones_removed_idx ON page_tombstones (removed);

-- A run: the (site, type) work one set of arguments asked for, shared by every process started
-- with those arguments while one of them is alive (its processes hold a shared advisory lock).
CREATE TABLE crawl_runs (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_key   text NOT NULL,
    arguments jsonb NOT NULL,
    created   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX crawl_runs_key_idx ON crawl_runs (run_key, id DESC);

-- Every claim takes a new token; every write by a holder names it (fencing).
CREATE SEQUENCE backfill_lease_tokens;

CREATE TABLE backfill_jobs (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subdomain          text NOT NULL REFERENCES municipalities (subdomain),
    document_type      text NOT NULL CHECK (document_type IN ('agenda', 'minutes')),
    status             text NOT NULL DEFAULT 'pending'
                       CHECK (status IN ('pending', 'running', 'completed', 'failed', 'paused')),
    last_cursor        text,
    pages_fetched      bigint NOT NULL DEFAULT 0,
    pages_created      bigint NOT NULL DEFAULT 0,
    pages_updated      bigint NOT NULL DEFAULT 0,
    errors_encountered bigint NOT NULL DEFAULT 0,
    batches_committed  bigint NOT NULL DEFAULT 0,
    expected_count     bigint,
    actual_count       bigint,
    verified_at        timestamptz,
    verify_status      text CHECK (verify_status IN ('passed', 'warned', 'failed', 'unknown')),
    last_error         text,
    retry_count        integer NOT NULL DEFAULT 0,
    created            timestamptz NOT NULL DEFAULT now(),
    modified           timestamptz NOT NULL DEFAULT now(),
    pages_exhausted_at timestamptz,
    missing_count      bigint,
    rejected_count     bigint,
    run_id             bigint REFERENCES crawl_runs (id),
    lease_token        bigint,
    mode               text NOT NULL DEFAULT 'full' CHECK (mode IN ('full', 'catchup', 'verify')),
    extra_count        bigint,
    stale_count        bigint,
    pages_removed      bigint NOT NULL DEFAULT 0,
    claimed_at         timestamptz,
    verify_method      text CHECK (verify_method IN ('digest', 'exact')),
    pages_changed      bigint NOT NULL DEFAULT 0,
    pages_restored     bigint NOT NULL DEFAULT 0
);
-- At most one open (pending or running) job per (site, type).
CREATE UNIQUE INDEX backfill_jobs_one_open_idx
    ON backfill_jobs (subdomain, document_type) WHERE status IN ('pending', 'running');
CREATE INDEX backfill_jobs_run_idx ON backfill_jobs (run_id, status);
CREATE INDEX backfill_jobs_site_type_idx ON backfill_jobs (subdomain, document_type, id DESC);
CREATE INDEX backfill_jobs_status_idx ON backfill_jobs (status);

CREATE TABLE rejected_rows (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subdomain     text NOT NULL,
    document_type text NOT NULL CHECK (document_type IN ('agenda', 'minutes')),
    row_id        text,
    reason        text NOT NULL,
    raw           text NOT NULL,
    raw_md5       text GENERATED ALWAYS AS (md5(raw)) STORED,
    job_id        bigint REFERENCES backfill_jobs (id),
    created       timestamptz NOT NULL DEFAULT now(),
    modified      timestamptz NOT NULL DEFAULT now(),
    content_fp    bigint NOT NULL DEFAULT 0,
    -- identical rows the source holds (NULL-id twins): one rejection that counts them all
    copies        integer NOT NULL DEFAULT 1 CHECK (copies >= 1),
    -- the same bad row met again (a re-crawl) is one rejection, not two
    UNIQUE (subdomain, document_type, raw_md5)
);

-- The ids one full pass of a job has seen, one row per stored page: what it did not see, the
-- source no longer has. No foreign key and no index per id: the page transaction stays cheap
-- (0008); forget_seen removes a job's rows with its verdict.
CREATE TABLE job_seen_pages (
    job_id bigint NOT NULL,
    ids    text[] NOT NULL
);
CREATE INDEX job_seen_pages_job_idx ON job_seen_pages (job_id);

-- civicband/digest.py's content_fp in PostgreSQL, for values PostgreSQL holds (no NUL): the
-- same weights over the hex digits of the values joined (votes_json, entities_json,
-- page_image), times the factor of the id's second half. tests/test_digest.py checks that
-- Python, SQLite and this function agree.
CREATE FUNCTION civicband_content_fp(
    id text, page_image text, entities_json text, votes_json text
) RETURNS bigint
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    x text := upper(encode(convert_to(
        coalesce(votes_json, '') || coalesce(entities_json, '') || coalesce(page_image, ''),
        'UTF8'), 'hex'));
    -- the tail: the last 36 hex digits less D, E and F, read as two numbers of 18 digits
    tail text := replace(replace(replace(right(x, 36), 'D', ''), 'E', ''), 'F', '');
    -- the chains: each pattern's first occurrences one after the other, and their weights;
    -- width 0 weighs the position, else the leading decimal digits of the next width hex digits
    patterns text[] := ARRAY['6E617922', '7973223A20', '5C75'];
    widths int[] := ARRAY[0, 4, 8];
    weights bigint[] := ARRAY[
        [9811, 8377, 7121, 6053, 5147, 4373, 3719, 3163],
        [9497, 8087, 6883, 0, 0, 0, 0, 0],
        [9973, 8501, 7237, 6151, 5231, 4451, 3779, 3209]];
    lengths int[] := ARRAY[8, 3, 8];
    total bigint;
    at bigint;
    found int;
    w text;
BEGIN
    total := 5064::bigint * coalesce(length(votes_json) + 1, 0)
        + 3478::bigint * coalesce(length(entities_json) + 1, 0)
        + 1686::bigint * coalesce(length(page_image) + 1, 0)
        + 7921::bigint * (length(x) - length(replace(x, '0', '')))
        + 6665::bigint * (length(x) - length(replace(x, '1', '')))
        + 2082::bigint * (length(x) - length(replace(x, '2', '')))
        + 8410::bigint * (length(x) - length(replace(x, '3', '')))
        + 7045::bigint * (length(x) - length(replace(x, '4', '')))
        + 8436::bigint * (length(x) - length(replace(x, '5', '')))
        + 1166::bigint * (length(x) - length(replace(x, '6', '')))
        + 5740::bigint * (length(x) - length(replace(x, '7', '')))
        + 5704::bigint * (length(x) - length(replace(x, '8', '')))
        + 7306::bigint * (length(x) - length(replace(x, '9', '')))
        + 6441::bigint * (length(x) - length(replace(x, 'A', '')))
        + 4917::bigint * (length(x) - length(replace(x, 'B', '')))
        + 5094::bigint * (length(x) - length(replace(x, 'C', '')))
        + 6856::bigint * (length(x) - length(replace(x, 'D', '')))
        + 3141::bigint * (length(x) - length(replace(x, 'E', '')))
        + 9244::bigint * strpos(x, '30')
        + 7484::bigint * strpos(x, '31')
        + 5308::bigint * strpos(x, '32')
        + 2070::bigint * strpos(x, '33')
        + 3213::bigint * strpos(x, '34')
        + 4161::bigint * strpos(x, '35')
        + 5778::bigint * strpos(x, '36')
        + 9933::bigint * strpos(x, '37')
        + 6579::bigint * strpos(x, '38')
        + 7468::bigint * strpos(x, '39')
        + 4299::bigint * strpos(x, '6E617922')
        + 3134::bigint * strpos(x, '61796522')
        + 2749::bigint * (coalesce(substring(substr(tail, 1, 18) FROM '^[0-9]+'), '0')::bigint
            % 2147483647)
        + 1913::bigint * (coalesce(substring(substr(tail, 19, 18) FROM '^[0-9]+'), '0')::bigint
            % 2147483647);
    FOR c IN 1..3 LOOP
        at := 0;
        FOR k IN 1..lengths[c] LOOP
            found := strpos(substr(x, (at + 1)::int), patterns[c]);
            at := CASE WHEN found > 0 THEN at + found ELSE 99999999 END;
            IF widths[c] = 0 THEN
                total := total + weights[c][k] * (at % 99999999);
            ELSE
                w := substr(x, (at + length(patterns[c]))::int, widths[c]);
                total := total + weights[c][k]
                    * coalesce(substring(w FROM '^[0-9]+'), '0')::bigint;
            END IF;
        END LOOP;
    END LOOP;
    RETURN total % 2147483647
        * CASE WHEN id ~ '^[0-9a-f]{12}$'
               THEN ('x' || substr(id, 7, 6))::bit(24)::int + 1118481 ELSE 1 END
        % 2147483647;
END
$$;
