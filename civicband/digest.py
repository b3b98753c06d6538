"""Bucket digests of a (site, type): the source's SQL, the mirror's, and how they compare.

A bucket is the ids sharing their first two hex digits (`substr(id, 1, 2)`). Its digest is the
row count, the exact sum of the ids' values (as two 24-bit halves, so core SQLite can compute
it from the id index: `instr('0123456789abcdef', digit) - 1` per digit) and the sum of every
row's content fingerprint (`content_fp`): what the id does not hash (page_image,
entities_json, votes_json) changes in place, so it is summed too. Ids that are not twelve
lowercase hex digits (NULL, short, upper case, anything else) all fall in the bucket `~` and are
counted there; they are compared id by id when that bucket differs.

PostgreSQL reproduces the id sums with `('x' || substr(id, 1, 6))::bit(24)::int`
(sql/queries.sql: `local_digest`). The fingerprint cannot be recomputed there once NULs are
removed from the text, so it is computed in Python when a row is stored (`content_fp`) with
SQLite's own semantics: text ends at its first NUL.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

HEX_ID = re.compile(r"^[0-9a-f]{12}\Z")
OTHER = "~"  # the bucket of every id that is not 12 lowercase hex digits (sorts after hex)
HEX = "0123456789abcdef"
HEX_BUCKETS = tuple(a + b for a in HEX for b in HEX)
# Columns outside the id hash and their weights in a row's fingerprint: small, so that a
# bucket's sum of fingerprints stays far inside SQLite's 64-bit integers.
CONTENT_COLUMNS = (("page_image", 1), ("entities_json", 3), ("votes_json", 7))
# Characters sampled from each value of length L: (weight, a, b) samples position 1 + a*L/b.
_SAMPLES = ((101, 1, 5), (211, 2, 5), (307, 3, 5), (401, 4, 5))
# Letters counted in each value, and their weights: a re-extraction that keeps a value's
# length and sampled characters (names reordered or swapped) still changes these counts.
_COUNTS = (("a", 1009), ("e", 2003), ("i", 3001), ("o", 4001))
_LENGTH_WEIGHT = 7


def bucket_of(row_id: Any) -> str:
    """The bucket an id belongs to."""
    return row_id[:2] if isinstance(row_id, str) and HEX_ID.match(row_id) else OTHER


def id_halves(row_id: str) -> tuple[int, int]:
    """The two 24-bit halves of a hex id's value, as both sides sum them."""
    return int(row_id[:6], 16), int(row_id[6:12], 16)


def text_fp(value: Any) -> int:
    """One value's fingerprint, exactly as the SQLite expression of `_fp_sql` computes it."""
    if value is None:
        return 0
    text = value if isinstance(value, str) else str(value)
    if "\x00" in text:
        text = text[: text.index("\x00")]  # SQLite's text functions stop at the first NUL
    length = len(text)
    if not length:
        return 1
    sampled = sum(weight * ord(text[a * length // b]) for weight, a, b in _SAMPLES)
    counted = sum(weight * text.count(letter) for letter, weight in _COUNTS)
    return 1 + _LENGTH_WEIGHT * length + sampled + counted


def content_fp(row: Mapping[str, Any]) -> int:
    """A row's fingerprint of the columns its id does not hash (missing columns count as NULL)."""
    return sum(weight * text_fp(row.get(column)) for column, weight in CONTENT_COLUMNS)


# ---- the source's SQL (core SQLite only) ---------------------------------------------------------
# The SQL travels in the URL, which must stay within URLLENGTH_LIMIT: an inner query gives every
# value a one-letter name and its length, so the expressions stay short.

_ALIASES = {"page_image": "p", "entities_json": "e", "votes_json": "v"}
# An id of twelve lowercase hex digits, as HEX_ID says. length() and glob stop at a NUL, so the
# id's bytes are counted too: `abcdef012345` followed by NUL is not one.
CONFORMS = "ifnull(length(id)=12 and length(cast(id as blob))=12 and id not glob '*[^0-9a-f]*',0)"
# 0x111111: instr() counts hex digits from 1, so each six-digit half is this much too large.
_HALF_OFFSET = int("111111", 16)


def _fp_sql(columns: Iterable[str]) -> str:
    """The row fingerprint over the inner query's names; missing columns (older sites) are NULL.

    A letter's count is `L - length(replace(v, letter, ''))`; the L terms are gathered into one
    coefficient and the rest subtracted, which keeps the URL short. An empty value has no
    characters to sample (unicode() is NULL), hence `lv=0` as the fallback: 1, and 0 for NULL.
    """
    have = set(columns)
    length_weight = _LENGTH_WEIGHT + sum(weight for _, weight in _COUNTS)
    terms = []
    for column, weight in CONTENT_COLUMNS:
        if column not in have:
            continue
        value, length = _ALIASES[column], "l" + _ALIASES[column]
        samples = "".join(
            f"+{w}*unicode(substr({value},1+{f'{a}*' if a > 1 else ''}{length}/{b},1))"
            for w, a, b in _SAMPLES
        )
        counts = "".join(f"-{w}*length(replace({value},'{c}',''))" for c, w in _COUNTS)
        term = f"coalesce(1+{length_weight}*{length}{samples}{counts},{length}=0,0)"
        terms.append(term if weight == 1 else f"{weight}*{term}")
    return "+".join(terms) or "0"


def _inner_sql(table: str, columns: Iterable[str], where: str) -> str:
    """Each row's id, whether it is 12 hex digits (c), and the content columns with lengths."""
    have = set(columns)
    named = "".join(
        f",{column} as {alias},length({column}) as l{alias}"
        for column, alias in _ALIASES.items()
        if column in have
    )
    return f"select id,{CONFORMS} as c{named} from {table} where {where}"


def _half_sql(first: int) -> str:
    return "+".join(f"instr(:h,substr(id,{first + k},1))*{16 ** (5 - k)}" for k in range(6))


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


def digest_sql(table: str, columns: Iterable[str], id_range: IdRange) -> tuple[str, dict[str, str]]:
    """One SQL request: every bucket of one id range with its count, id sums and fingerprint sum.

    Only the fingerprint reads the table; the rest reads the id index alone.
    """
    where, params = id_range.where()
    offset = f"sum(c)*{_HALF_OFFSET}"
    sql = (
        f"select case when c then substr(id,1,2) else '{OTHER}' end as bucket,count(*) as n,"
        f"sum(c*({_half_sql(1)}))-{offset} as hi,sum(c*({_half_sql(7)}))-{offset} as lo,"
        f"sum({_fp_sql(columns)}) as fp from ({_inner_sql(table, columns, where)})"
        " group by bucket order by bucket"
    )
    return sql, {**params, "h": HEX}


def listing_sql(table: str, columns: Iterable[str], limit: int) -> str:
    """Ids and fingerprints of a list of hex buckets (`:buckets`, JSON), keyset after `:after`."""
    where = "id>:after and substr(id,1,2) in (select value from json_each(:buckets))"
    return (
        f"select id,{_fp_sql(columns)} as fp from ({_inner_sql(table, columns, where)})"
        f" where c order by id limit {int(limit)}"
    )


def other_rows_sql(table: str, limit: int) -> str:
    """Whole rows of the `~` bucket (NULL and non-hex ids), keyset on rowid."""
    return (
        f"select rowid as civicband_rowid,* from {table} where rowid>:after"
        f" and not {CONFORMS}"
        f" order by rowid limit {int(limit)}"
    )


UNHASHED_COLUMNS = ("page_image", "entities_json", "votes_json")


def rows_by_id_sql(table: str) -> str:
    """Whole rows for a JSON list of ids (`:ids`: bound as text, so all-digit ids stay text)."""
    return f"select * from {table} where id in (select value from json_each(:ids))"


def values_by_id_sql(table: str, columns: Iterable[str]) -> str:
    """The columns the id does not hash, for a JSON list of ids: a removed page coming back.

    Never the text (the id covers it, and the tombstone has it); a column an older site lacks
    reads as NULL, as the mirror stores it from that site.
    """
    have = set(columns)
    named = ",".join(c if c in have else f"null as {c}" for c in UNHASHED_COLUMNS)
    return f"select id,{named} from {table} where id in (select value from json_each(:ids))"


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
