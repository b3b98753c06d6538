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
