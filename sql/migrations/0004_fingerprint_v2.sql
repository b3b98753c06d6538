-- The content fingerprint, second version (issue 17): designed against the changes clerk really
-- makes (see civicband/digest.py and bench/fingerprint.py), and tied to each row's id. Stored
-- fingerprints are recomputed here, so an existing mirror does not fetch its pages again.

-- civicband/digest.py's content_fp in PostgreSQL, for values PostgreSQL holds (no NUL): the
-- same weights over the hex digits of the values joined (votes_json, entities_json,
-- page_image), times the factor of the id's second half. tests/test_digest.py checks that
-- Python, SQLite and this function agree.
CREATE FUNCTION civicband_content_fp(
    id text, page_image text, entities_json text, votes_json text
) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
SELECT (0
        + 5064::bigint * coalesce(length(votes_json) + 1, 0)
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
    ) % 2147483647
    * CASE WHEN id ~ '^[0-9a-f]{12}$'
           THEN ('x' || substr(id, 7, 6))::bit(24)::int + 1118481 ELSE 1 END
    % 2147483647
FROM (SELECT upper(encode(convert_to(
    coalesce(votes_json, '') || coalesce(entities_json, '') || coalesce(page_image, ''), 'UTF8'
), 'hex')) AS x) AS h
$$;

-- Pages: the values PostgreSQL holds are the values the source sent, less any NUL; a page whose
-- value held one gets another fingerprint than the source's and is fetched once more.
UPDATE meeting_pages
SET content_fp = civicband_content_fp(id, page_image, entities_json, votes_json);

-- Rejected rows: from their raw JSON (rows.raw_text). Raw text that is not a JSON object, or
-- holds an escaped NUL (PostgreSQL text cannot), or a value that is not a string (a number as
-- Python prints it, a BLOB), gets 0 or another fingerprint: it differs from the source's, and the
-- next catch-up fetches that row again and files it with the fingerprint Python computes.
DO $$
DECLARE
    r record;
    j jsonb;
BEGIN
    FOR r IN SELECT id, raw FROM rejected_rows LOOP
        BEGIN
            j := r.raw::jsonb;
            UPDATE rejected_rows SET content_fp = CASE WHEN jsonb_typeof(j) = 'object' THEN
                civicband_content_fp(
                    CASE WHEN jsonb_typeof(j -> 'id') = 'string' THEN j ->> 'id' END,
                    j ->> 'page_image', j ->> 'entities_json', j ->> 'votes_json')
                ELSE 0 END
            WHERE id = r.id;
        EXCEPTION WHEN others THEN
            UPDATE rejected_rows SET content_fp = 0 WHERE id = r.id;
        END;
    END LOOP;
END
$$;
