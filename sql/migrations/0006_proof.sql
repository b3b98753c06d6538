-- `passed` means equal (issue 17): what the proof needs the schema to say.

-- Identical source rows with NULL ids are one rejection (raw_md5 is unique); the digest must
-- count every copy the source holds, or a faithful copy never passes.
ALTER TABLE rejected_rows ADD COLUMN copies integer NOT NULL DEFAULT 1 CHECK (copies >= 1);

-- municipalities.source_legacy is no longer read or written: which columns a site has is
-- learned from every answer (a site mirrored with six columns gains two when it is rebuilt).
-- It stays until a later release, so that workers of the previous version sharing this
-- database keep running.
