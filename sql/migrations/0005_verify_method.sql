-- Which check judged a job's verification: the bucket digests (daily), or every value of the
-- columns the id does not hash compared one by one (exact=true, weekly). NULL until verified.

ALTER TABLE backfill_jobs ADD COLUMN verify_method text
    CHECK (verify_method IN ('digest', 'exact'));
