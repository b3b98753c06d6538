-- The change feed (issue 19): every change to a page takes a version from one sequence, removed
-- pages become tombstones (with their content, so a page that comes back needs no fetch of its
-- text), and jobs count what they changed and brought back.

CREATE SEQUENCE meeting_page_versions;

-- Pages already mirrored get their versions once, in a stable order (byte order of the key, not
-- a locale's), so that `scrapy changes --since 0` lists every page the mirror holds.
ALTER TABLE meeting_pages ADD COLUMN version bigint;
UPDATE meeting_pages p SET version = n.version
  FROM (SELECT subdomain, document_type, id,
               row_number() OVER (ORDER BY subdomain COLLATE "C", document_type COLLATE "C",
                                           id COLLATE "C") AS version
          FROM meeting_pages) n
 WHERE p.subdomain = n.subdomain AND p.document_type = n.document_type AND p.id = n.id;
SELECT setval('meeting_page_versions', coalesce(max(version), 1), max(version) IS NOT NULL)
  FROM meeting_pages;
-- No default: a writer that does not take versions under the lock (a worker of an earlier
-- release) fails loudly instead of writing changes the feed would skip.
ALTER TABLE meeting_pages ALTER COLUMN version SET NOT NULL;
CREATE INDEX meeting_pages_version_idx ON meeting_pages (version);

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

ALTER TABLE backfill_jobs ADD COLUMN pages_changed bigint NOT NULL DEFAULT 0;
ALTER TABLE backfill_jobs ADD COLUMN pages_restored bigint NOT NULL DEFAULT 0;
