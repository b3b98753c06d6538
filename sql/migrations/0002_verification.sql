-- Verification and clean-pass sweeps: when a job ran out of pages, and which ids its pass saw.

ALTER TABLE backfill_jobs ADD COLUMN pages_exhausted_at timestamptz;
ALTER TABLE backfill_jobs ADD COLUMN missing_count bigint;
ALTER TABLE backfill_jobs ADD COLUMN rejected_count bigint;

-- The ids one full pass of a job has seen: what it did not see, the source no longer has.
CREATE TABLE job_seen_ids (
    job_id bigint NOT NULL REFERENCES backfill_jobs (id) ON DELETE CASCADE,
    id     text NOT NULL,
    PRIMARY KEY (job_id, id)
);
