-- A full pass remembers the ids it saw as one row per stored page (an array), not one row per id:
-- job_seen_ids cost every page 1,000 index entries and 1,000 foreign-key checks (a trigger per
-- row), a fifth of the page transaction. Still written in the page's own transaction and logged,
-- so a pass resumed after a kill -9 sweeps with every page it committed. No foreign key: jobs are
-- never deleted, and forget_seen removes a job's rows when its verdict is recorded.
CREATE TABLE job_seen_pages (
    job_id bigint NOT NULL,
    ids    text[] NOT NULL
);
CREATE INDEX job_seen_pages_job_idx ON job_seen_pages (job_id);

-- A pass paused or cut off under the previous version keeps what it saw.
INSERT INTO job_seen_pages (job_id, ids)
SELECT job_id, array_agg(id) FROM job_seen_ids GROUP BY job_id;
-- Dropped, not kept: a worker of the previous version sharing the database fails loudly instead
-- of remembering ids where no sweep reads them.
DROP TABLE job_seen_ids;
