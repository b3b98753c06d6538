"""Bucket digests of a (site, type): the source's SQL, the mirror's, and how they compare.

A bucket is the ids sharing their first two hex digits (`substr(id, 1, 2)`). Its digest is the
row count, the exact sum of the ids' values (as two 24-bit halves, so core SQLite can compute
it from the id index: `instr('0123456789abcdef', digit) - 1` per digit) and the sum of every
row's content fingerprint (`content_fp`): what the id does not hash (page_image,
entities_json, votes_json) changes in place, so it is summed too. Ids that are not twelve
lowercase hex digits (NULL, short, upper case, anything else) all fall in the bucket `~` and are
counted there; they are compared id by id when that bucket differs.

PostgreSQL reproduces the id sums with `('x' || substr(id, 1, 6))::bit(24)::int`
(sql/queries.sql: `local_digest`). The fingerprint is computed in Python when a row is stored
(`content_fp`), from the values as the source's SQLite holds them: PostgreSQL cannot hold a NUL,
so it could not recompute it for such a value (sql/: `civicband_content_fp` does, for the rest).

The fingerprint is a sample, not a hash (core SQLite has none), designed against the changes
that really happen and measured by bench/fingerprint.py: over the hex digits of the values
joined, the count of each hex digit (so any byte corrected at the same length, a case or a
`\\uXXXX` escape, changes a count) and where the first of each decimal digit and of the votes
`nay"` and `aye"` stand (so a tally or a vote moved without changing any count changes a
position), chains of later occurrences (where the first 8 `nay"` stand, the number after each
of the first 3 `nays": `, the digits of the first 8 `\\uXXXX` escapes) and the last 18 bytes read
as numbers (page_image's date and page: a reordering of bytes that are not the first of their
kind changes one of these), plus each value's length; modulo a prime, times a factor from the
id, so two rows exchanging values change their bucket's sum. Hex digits are the same bytes on
every side: text with NUL, invalid UTF-8 and BLOBs included.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from operator import mul
from typing import Any

# The columns the id does not hash: they change in place, so a fingerprint samples them.
UNHASHED_COLUMNS = ("page_image", "entities_json", "votes_json")
HEX_ID = re.compile(r"^[0-9a-f]{12}\Z")
OTHER = "~"  # the bucket of every id that is not 12 lowercase hex digits (sorts after hex)
HEX = "0123456789abcdef"
HEX_BUCKETS = tuple(a + b for a in HEX for b in HEX)
# Columns outside the id hash, in the order their bytes are joined, and the weight of each one's
# length: the lengths tell where one column ends and the next begins.
CONTENT_COLUMNS = (("votes_json", 5064), ("entities_json", 3478), ("page_image", 1686))
# Weights of each hex digit's count in hex(value): every byte's two nibbles, so a digit, a letter
# or its case corrected at the same length changes some count (0xF is implied by the lengths).
_NIBBLES = tuple(
    zip(
        "0123456789ABCDE",
        (7921, 6665, 2082, 8410, 7045, 8436, 1166, 5740, 5704, 7306, 6441, 4917, 5094, 6856, 3141),
        strict=True,
    )
)
# Where each of these bytes first appears in hex(value), and its weight: a tally's digits
# (votes_json comes first, so the first vote's tally holds the first digits) and the votes of
# members, which an exchange moves without changing any count.
_FIRSTS = tuple(
    zip(
        (*(f"3{d}" for d in range(10)), b'nay"'.hex().upper(), b'aye"'.hex().upper()),
        (9244, 7484, 5308, 2070, 3213, 4161, 5778, 9933, 6579, 7468, 4299, 3134),
        strict=True,
    )
)
# Chains: where each of the first _CHAIN occurrences of a pattern stands, one found after the
# other, or what is written right after it (`width` hex digits, read as SQLite's cast(... as
# integer) reads them: their leading decimal digits). So a byte that is not the first of its
# kind is seen too: a member's vote moved (its `nay"`), any motion's nays (read after `ys": `,
# so 5-4 to 4-5 and 7-0 to 6-1 change it) and an escape's four hex digits (after `\\u`, which
# are all decimal in hex(): "e9" is 6539). An occurrence not found puts the chain at _NOT_FOUND,
# past any value, so the rest of the chain costs nothing.
_CHAINS = (
    (b'nay"'.hex().upper(), 0, (9811, 8377, 7121, 6053, 5147, 4373, 3719, 3163)),
    (b'ys": '.hex().upper(), 4, (9497, 8087, 6883)),
    (b"\\u".hex().upper(), 8, (9973, 8501, 7237, 6151, 5231, 4451, 3779, 3209)),
)
_CHAIN = max(len(weights) for _, _, weights in _CHAINS)  # the SQL's layers
_NOT_FOUND = 99999999
_CHAIN_NAMES = "ntu"  # the chains' positions in the SQL
# The last _TAIL hex digits (page_image's date and page number), less the letters D, E and F
# (the hex of "-", "/" and "."), read as two numbers of at most 18 decimal digits and weighted:
# digits exchanged within the date or the page number change them.
_TAIL = 36
_TAIL_WEIGHTS = (2749, 1913)
# A row's fingerprint is its values' sum modulo this prime times a factor from its id (below
# 2**25): under 2**56 a row, so a bucket of 100,000 rows sums far inside 64-bit integers.
MODULUS = 2**31 - 1
# 0x111111: instr() counts hex digits from 1, so each six-digit half is this much too large.
HALF_OFFSET = int("111111", 16)


def bucket_of(row_id: Any) -> str:
    """The bucket an id belongs to."""
    return row_id[:2] if isinstance(row_id, str) and HEX_ID.match(row_id) else OTHER


def id_halves(row_id: str) -> tuple[int, int]:
    """The two 24-bit halves of a hex id's value, as both sides sum them."""
    return int(row_id[:6], 16), int(row_id[6:12], 16)


def id_factor(row_id: Any) -> int:
    """What a row's fingerprint is multiplied by: two rows exchanging values change the sum."""
    return id_halves(row_id)[1] + HALF_OFFSET if bucket_of(row_id) != OTHER else 1


def _blob(value: Mapping[str, Any]) -> bytes | None:
    """A BLOB as Datasette 1.0 serves it ({"$base64": true, "encoded": ...}); None otherwise."""
    if value.get("$base64") is True and isinstance(value.get("encoded"), str):
        try:
            return base64.b64decode(value["encoded"], validate=True)
        except ValueError:
            return None
    return None


def _sqlite_value(value: Any) -> tuple[int, bytes] | None:
    """SQLite's length() of a stored value and its bytes as || and hex() read them; None: NULL.

    length() counts characters up to the first NUL of text, and every byte of a BLOB.
    """
    if value is None:
        return None
    if type(value) is str:  # nearly every value: tested first, before the ABC check below
        length = len(value) if "\x00" not in value else len(value.split("\x00", 1)[0])
        return length, value.encode("utf-8", "surrogatepass")
    if isinstance(value, bytes):
        return len(value), value
    if isinstance(value, Mapping) and (blob := _blob(value)) is not None:
        return len(blob), blob
    text = str(value)
    return len(text.split("\x00", 1)[0]), text.encode("utf-8", "surrogatepass")


def _leading_int(digits: str) -> int:
    """SQLite's cast(digits as integer) of hex digits: their leading decimal digits, or 0."""
    decimal = digits[: len(digits) - len(digits.lstrip("0123456789"))]
    return int(decimal) if decimal else 0


def _chained(digits: str) -> int:
    """The chains' and the tail's terms over hex(value), as _chain_sql computes them."""
    total = 0
    for pattern, width, weights in _CHAINS:
        at = 0
        for weight in weights:
            found = digits.find(pattern, at)
            if found < 0 and len(digits) < _NOT_FOUND:
                break  # the rest of the chain stands past the value's end: each step reads 0
            at = found + 1 if found >= 0 else _NOT_FOUND
            start = at - 1 + len(pattern)
            read = _leading_int(digits[start : start + width]) if width else at % _NOT_FOUND
            total += weight * read
    tail = digits[-_TAIL:].replace("D", "").replace("E", "").replace("F", "")
    for k, weight in enumerate(_TAIL_WEIGHTS):
        total += weight * (_leading_int(tail[18 * k : 18 * k + 18]) % MODULUS)
    return total


# The nibbles' and first bytes' terms as one sum of products over C-level maps (value_fp runs
# for every row a crawl stores, so its constant terms are gathered once here).
_NIBBLE_DIGITS = tuple(nibble for nibble, _ in _NIBBLES)
_NIBBLE_WEIGHTS = tuple(weight for _, weight in _NIBBLES)
_FIRST_BYTES = tuple(byte for byte, _ in _FIRSTS)
_FIRST_WEIGHTS = tuple(weight for _, weight in _FIRSTS)
_FIRSTS_OFFSET = sum(_FIRST_WEIGHTS)  # find() counts from 0, instr() from 1


def value_fp(row: Mapping[str, Any]) -> int:
    """The fingerprint of a row's values alone, before its id's factor (modulo MODULUS)."""
    joined = b""
    total = 0
    for column, weight in CONTENT_COLUMNS:
        stored = _sqlite_value(row.get(column))
        if stored is not None:
            total += weight * (stored[0] + 1)
            joined += stored[1]
    digits = joined.hex().upper()
    total += sum(map(mul, _NIBBLE_WEIGHTS, map(digits.count, _NIBBLE_DIGITS)))
    total += sum(map(mul, _FIRST_WEIGHTS, map(digits.find, _FIRST_BYTES))) + _FIRSTS_OFFSET
    return (total + _chained(digits)) % MODULUS


def content_fp(row: Mapping[str, Any]) -> int:
    """A row's fingerprint of the columns its id does not hash, tied to its id (`row["id"]`).

    Missing columns count as NULL; a row whose three values are NULL has 0.
    """
    return value_fp(row) * id_factor(row.get("id")) % MODULUS


# ---- the source's SQL (core SQLite only) ---------------------------------------------------------
# The SQL travels in the URL, which must stay within URLLENGTH_LIMIT: an inner query gives every
# value a one-letter name, so the expressions stay short.

_ALIASES = {"page_image": "p", "entities_json": "e", "votes_json": "v"}
# An id of twelve lowercase hex digits, as HEX_ID says. length() and glob stop at a NUL, so the
# id's bytes are counted too: `abcdef012345` followed by NUL is not one.
CONFORMS = "ifnull(length(id)=12 and length(cast(id as blob))=12 and id not glob '*[^0-9a-f]*',0)"


def _literal(digits: str) -> str:
    """Hex digits as an SQL literal: all-decimal ones unquoted (SQLite reads them as that text)."""
    return digits if digits.isdecimal() and digits[0] != "0" or digits == "0" else f"'{digits}'"


def fp_sql(columns: Iterable[str]) -> str:
    """The row fingerprint over the inner query's names; missing columns (older sites) are NULL.

    A nibble's count is `length(x) - length(replace(x, nibble, ''))`; the length terms are
    gathered into one coefficient, which keeps the URL short. `o` is the id's second half plus
    0x111111 (the factor of `id_factor`), `x` the hex digits of the joined values.
    """
    have = [(_ALIASES[c], w) for c, w in CONTENT_COLUMNS if c in set(columns)]
    if not have:
        return "0"
    lengths = "".join(f"+{w}*ifnull(l{alias}+1,0)" for alias, w in have)
    counts = "".join(f"-{w}*length(replace(x,{_literal(n)},''))" for n, w in _NIBBLES)
    firsts = "".join(f"+{w}*instr(x,{_literal(b)})" for b, w in _FIRSTS)
    nibbles = sum(w for _, w in _NIBBLES)
    values = f"({nibbles}*length(x){counts}{firsts}{lengths}+s{_chain_terms(_CHAIN - 1)})%{MODULUS}"
    return f"{values}*ifnull(nullif(c*o,0),1)%{MODULUS}"


def inner_sql(source: str, columns: Iterable[str], names: str = "", hexes: str = ":h") -> str:
    """Each row of `source` (a table and its condition, or a tagged union of tables): its id,
    the columns `names` passes on, whether it is 12 hex digits (c), its second half plus
    0x111111 (o), the hex digits of its values joined (x) and each value's length."""
    have = [(c, a) for c, a in _ALIASES.items() if c in set(columns)]
    lengths = "".join(f",length({column}) as l{alias}" for column, alias in have)
    joined = "||".join(f"ifnull({c},'')" for c, _ in CONTENT_COLUMNS if c in set(columns))
    named = f",hex({joined}) as x{lengths}" if have else ""
    # LIMIT -1 keeps SQLite from flattening this query into the outer one, which would compute
    # hex() and the id's half once for every use of x and o instead of once a row.
    inner = (
        f"select id{names},{CONFORMS} as c,{half_sql(7, hexes)} as o{named} from {source} limit -1"
    )
    passed = f"id{names},c,o" + (",x" + "".join(f",l{alias}" for _, alias in have) if have else "")
    return _chain_sql(inner, passed) if have else inner


def content_columns(columns: Iterable[str]) -> str:
    """The columns a fingerprint reads, as a select list: the id and those the site has."""
    have = set(columns)
    return ",".join(["id", *(c for c, _ in CONTENT_COLUMNS if c in have)])


def tagged_union(tables: Mapping[str, str], columns: Iterable[str], where: str) -> str:
    """Several tables' rows in one source, each tagged (`tag`) with its document type."""
    select = content_columns(columns)
    return (
        "("
        + " union all ".join(
            f"select '{tag}' tag,{select} from {table} where {where}"
            for tag, table in tables.items()
        )
        + ")"
    )


def _chain_terms(k: int) -> str:
    """The chains' terms for their k-th occurrences (from 0), whose positions are named n, t, u."""
    terms = []
    for (pattern, width, weights), name in zip(_CHAINS, _CHAIN_NAMES, strict=True):
        if k >= len(weights):
            continue
        if width:
            start = f"{name}+{len(pattern)}"
            terms.append(f"+{weights[k]}*cast(substr(x,{start},{width})as int)")
        else:
            terms.append(f"+{weights[k]}*({name}%{_NOT_FOUND})")
    return "".join(terms)


def _chain_sql(inner: str, names: str) -> str:
    """The inner query wrapped once for each occurrence of the longest chain: each layer finds
    the next occurrences (n, t, u) and adds the previous ones' terms to s (the tail's, in the
    first); a chain that has found all it looks for carries its position on."""
    tail = f"replace(replace(replace(substr(x,-{_TAIL}),'D',''),'E',''),'F','')"
    s = "+".join(
        f"{w}*(cast(substr({tail},{1 + 18 * k},18)as int)%{MODULUS})"
        for k, w in enumerate(_TAIL_WEIGHTS)
    )
    for k in range(_CHAIN):
        found = [
            name
            if k >= len(weights)
            else f"coalesce(nullif(instr(substr(x,{name}+1),{_literal(pattern)}),0)+{name},"
            f"{_NOT_FOUND})"
            if k
            else f"coalesce(nullif(instr(x,{_literal(pattern)}),0),{_NOT_FOUND})"
            for (pattern, _, weights), name in zip(_CHAINS, _CHAIN_NAMES, strict=True)
        ]
        added = f"s{_chain_terms(k - 1)}" if k else s
        columns = ",".join(
            f if f == name else f"{f} {name}" for f, name in zip(found, _CHAIN_NAMES, strict=True)
        )
        inner = f"select {names},{added} s,{columns} from ({inner}) limit -1"
    return inner


def half_sql(first: int, hexes: str = ":h") -> str:
    """Six hex digits' value plus 0x111111, in Horner's form (the shortest in the URL)."""
    digits = [f"instr({hexes},substr(id,{first + k},1))" for k in range(6)]
    return "(" * 5 + ")*16+".join(digits)


@dataclass(frozen=True)
class IdRange:
    """Ids in [low, high) in SQLite's binary order; None is open (low None includes NULL ids)."""

    low: str | None = None
    high: str | None = None

    def where(self) -> tuple[str, dict[str, str]]:
        """The SQL condition and its parameters."""
        if self.low is None and self.high is None:
            return "1", {}
        if self.low is None:
            return "(id is null or id < :high)", {"high": str(self.high)}
        if self.high is None:
            return "id >= :low", {"low": self.low}
        return "(id >= :low and id < :high)", {"low": self.low, "high": self.high}

    def split(self) -> list[IdRange]:
        """Sixteen ranges covering this one, cut after the next hex digit (for big tables)."""
        if self.low is not None:
            prefix = self.low
        elif self.high is not None:  # the first range: ids below high, NULL ids included
            prefix = self.high[:-1] + HEX[HEX.index(self.high[-1]) - 1]
        else:
            prefix = ""
        cuts = [prefix + digit for digit in HEX[1:]]
        bounds = [self.low, *cuts, self.high]
        return [IdRange(a, b) for a, b in zip(bounds, bounds[1:], strict=False)]

    @property
    def depth(self) -> int:
        """How many times the whole range was split to get this one."""
        return len(self.low or self.high or "")


def digest_sql(
    tables: str | Mapping[str, str], columns: Iterable[str], id_range: IdRange
) -> tuple[str, dict[str, str]]:
    """One SQL request: every bucket of one id range of each table (`tag`: a document type,
    or '' for one table named alone) with its count, id sums and fingerprint sum.

    Both tables of a site in one answer make an unchanged site one request. Only the
    fingerprint reads the table; the rest reads the id index alone.
    """
    where, params = id_range.where()
    tagged = {"": tables} if isinstance(tables, str) else tables
    offset = f"sum(c)*{HALF_OFFSET}"
    inner = inner_sql(tagged_union(tagged, columns, where), columns, ",tag")
    sql = (
        f"select tag,case when c then substr(id,1,2) else '{OTHER}' end as bucket,count(*) as n,"
        f"sum(c*({half_sql(1)}))-{offset} as hi,sum(c*o)-{offset} as lo,"
        f"sum({fp_sql(columns)}) as fp from ({inner})"
        " group by tag,bucket order by tag,bucket"
    )
    return sql, {**params, "h": HEX}


def other_rows_sql(table: str, limit: int) -> str:
    """Whole rows of the `~` bucket (NULL and non-hex ids), keyset on rowid."""
    return (
        f"select rowid as civicband_rowid,* from {table} where rowid>:after"
        f" and not {CONFORMS}"
        f" order by rowid limit {int(limit)}"
    )


# ---- digests and their comparison (pure) ---------------------------------------------------------


@dataclass(frozen=True)
class Bucket:
    """One bucket's digest."""

    n: int = 0
    hi: int = 0
    lo: int = 0
    fp: int = 0

    def __add__(self, other: Bucket) -> Bucket:
        return Bucket(self.n + other.n, self.hi + other.hi, self.lo + other.lo, self.fp + other.fp)


Digest = dict[str, Bucket]


class DigestError(ValueError):
    """A digest answer that cannot be read; the message is one line."""


def _integer(row: Mapping[str, Any], key: str) -> int:
    value = row.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise DigestError(f"digest answer has a non-integer {key}: {value!r}")
    return value


def read_digest(rows: Iterable[Mapping[str, Any]]) -> Digest:
    """A digest from rows of (bucket, n, hi, lo, fp), as either side's SQL answers."""
    digest: Digest = {}
    for row in rows:
        bucket = row.get("bucket")
        if not isinstance(bucket, str):
            raise DigestError(f"digest answer has a bucket that is not text: {bucket!r}")
        part = Bucket(*(_integer(row, key) for key in ("n", "hi", "lo", "fp")))
        digest[bucket] = digest.get(bucket, Bucket()) + part
    return digest


def read_tagged(rows: Iterable[Mapping[str, Any]]) -> dict[str, Digest]:
    """Digests of several tables from one answer, by their `tag`."""
    tables: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        tag = row.get("tag")
        if not isinstance(tag, str):
            raise DigestError(f"digest answer has a table tag that is not text: {tag!r}")
        tables.setdefault(tag, []).append(row)
    return {tag: read_digest(part) for tag, part in tables.items()}


def merge(parts: Iterable[Digest]) -> Digest:
    """The digest of several id ranges together."""
    total: Digest = {}
    for part in parts:
        for bucket, value in part.items():
            total[bucket] = total.get(bucket, Bucket()) + value
    return total


def count(digest: Digest) -> int:
    """Rows the digest covers."""
    return sum(bucket.n for bucket in digest.values())


def seen_whole(source: Digest, seen: Digest) -> list[str]:
    """Hex buckets whose every id a pass saw: its count and id sums equal the source's.

    Only these prove that an id the pass did not see is gone (SPEC §3); the `~` bucket has no
    id sums to prove anything with and is never among them.
    """
    empty = Bucket()

    def ids(digest: Digest, bucket: str) -> tuple[int, int, int]:
        value = digest.get(bucket, empty)
        return value.n, value.hi, value.lo

    return [bucket for bucket in HEX_BUCKETS if ids(source, bucket) == ids(seen, bucket)]


def differing(source: Digest, local: Digest) -> list[str]:
    """Buckets whose digests differ, in order; empty means the two sets are equal."""
    empty = Bucket()
    return sorted(
        b for b in source.keys() | local.keys() if source.get(b, empty) != local.get(b, empty)
    )


@dataclass(frozen=True)
class Difference:
    """What listing the differing buckets found, id by id."""

    missing: list[str]  # at the source, neither stored nor rejected here
    extra: list[str]  # stored here, gone from the source
    stale: list[str]  # stored here with other content than the source now has
    stale_rejections: list[str]  # rejected ids the source no longer has

    def __add__(self, other: Difference) -> Difference:
        return Difference(
            self.missing + other.missing,
            self.extra + other.extra,
            self.stale + other.stale,
            self.stale_rejections + other.stale_rejections,
        )

    @property
    def to_fetch(self) -> list[str]:
        """Hex ids a catch-up fetches: new and changed pages (the `~` bucket comes whole)."""
        return sorted(i for i in {*self.missing, *self.stale} if HEX_ID.match(i))


def compare(
    source: Mapping[str, int], local: Mapping[str, int], rejected: Mapping[str, int]
) -> Difference:
    """Complete listings (id -> fingerprint) of the same buckets on both sides, compared.

    A rejected row changed at the source is stale too: fetched again, it is stored or
    rejected anew.
    """
    missing = sorted(set(source) - set(local) - set(rejected))
    extra = sorted(set(local) - set(source))
    stale = sorted(
        i
        for i in set(source) & (set(local) | set(rejected))
        if source[i] != local.get(i, rejected.get(i))
    )
    stale_rejections = sorted(set(rejected) - set(source))
    return Difference(missing, extra, stale, stale_rejections)
