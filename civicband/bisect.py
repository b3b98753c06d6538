"""Narrowing a difference down to its rows, as data-diff bisects, over HTTP and core SQLite.

Where a bucket's digest differs, the source is asked for the digests of its sub-buckets (the
next hex digits) or, once a bucket is small enough, for its ids and their fingerprints: both in
one kind of SQL answer, which names each bucket with the depth to answer it at (12: a listing)
and packs each bucket's answer into one row, so that an answer holds as many buckets as
`max_returned_rows`, not as many sub-buckets or ids. The mirror's side of the same buckets is
summed by PostgreSQL (sql/queries.sql: `local_subdigest`), and compared here.

Then the rows: new ids whole, ids whose values changed for page_image, entities_json and
votes_json only, and a bucket whose rows nearly all changed as a range, never id by id.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from civicband import digest
from civicband.digest import HALF_OFFSET, HEX, UNHASHED_COLUMNS, Bucket, DigestError

LIST_DEPTH = 12  # a bucket as deep as an id: its answer lists ids and fingerprints
HEX_CHARS = frozenset(HEX)
# Ids travel joined by "." (13 characters a hex id, against 21 as a JSON list in a URL).
ID_SEPARATOR = "."
WHOLE = ("id", "meeting", "date", "page", "text", "page_image", "entities_json", "votes_json")


def _select(columns: Iterable[str], wanted: Iterable[str]) -> str:
    """A select list of `wanted`, NULL for those an older site lacks (as the mirror keeps them)."""
    have = set(columns)
    return ",".join(c if c in have else f"null as {c}" for c in wanted)


def bisect_sql(tables: Mapping[str, str], columns: Iterable[str]) -> str:
    """Per table, its buckets (parameter named as its tag: prefixes joined by ".") answered at
    one depth (`<tag>_d`): one row per bucket, `packed` with its sub-buckets'
    `suffix:n:hi:lo:fp`, or at LIST_DEPTH its ids' `suffix:fp`, comma-separated.

    A bucket is a range of the id index ([prefix, prefix || 'g')), so only its rows are read.
    """
    content = [c for c, _ in digest.CONTENT_COLUMNS if c in set(columns)]
    picked = "".join(f",s.{c} {c}" for c in content)
    members = " union all ".join(
        f"select '{tag}' tag,cast(:{tag}_d as int) d,length(j.value) pl,s.id id{picked}"
        f" from {joined(tag)} j join {table} s on s.id>=j.value and s.id<j.value||'g'"
        for tag, table in tables.items()
    )
    inner = digest.inner_sql(f"({members})", columns, ",tag,d,pl", f"'{HEX}'")
    rows = (
        f"select tag,d,pl,substr(id,1,d) k,{digest.half_sql(1, repr(HEX))} h,o,"
        f"{digest.fp_sql(columns)} f from ({inner}) where c limit -1"
    )
    entry = (
        "case when d>=12 then substr(k,pl+1)||':'||sum(f) else substr(k,pl+1)||':'||count(*)"
        f"||':'||(sum(h)-count(*)*{HALF_OFFSET})||':'||(sum(o)-count(*)*{HALF_OFFSET})"
        "||':'||sum(f) end"
    )
    return (
        f"select tag,p,group_concat(e,',') as packed from (select tag,substr(k,1,pl) p,{entry} e"
        f" from ({rows}) group by tag,pl,d,k) group by tag,p order by tag,p"
    )


def joined(name: str) -> str:
    """A parameter of items joined by ID_SEPARATOR, as a table of their values (SQLite's JSON)."""
    return f"json_each('[\"'||replace(:{name},'{ID_SEPARATOR}','\",\"')||'\"]')"


@dataclass(frozen=True)
class Ask:
    """One table's buckets to answer, all at one depth."""

    depth: int
    prefixes: tuple[str, ...]

    def __post_init__(self) -> None:
        for prefix in self.prefixes:
            if not set(prefix) <= HEX_CHARS or not len(prefix) < self.depth <= LIST_DEPTH:
                raise ValueError(f"cannot ask bucket {prefix!r} at depth {self.depth}")

    def params(self, tag: str) -> dict[str, str]:
        """Its parameters in bisect_sql."""
        return {tag: ID_SEPARATOR.join(self.prefixes), f"{tag}_d": str(self.depth)}


@dataclass
class Answer:
    """What one table's buckets answered: sub-bucket digests and listed ids."""

    digests: dict[str, Bucket]
    listed: dict[str, int]


def read_packed(
    rows: Iterable[Mapping[str, object]], asked: Mapping[str, Mapping[str, int]]
) -> dict[str, Answer]:
    """Answers per table tag from packed rows; a bucket asked and absent holds no rows."""
    got = {tag: Answer({}, {}) for tag in asked}
    for row in rows:
        tag, prefix, packed = row.get("tag"), row.get("p"), row.get("packed")
        if not (isinstance(tag, str) and isinstance(prefix, str) and isinstance(packed, str)):
            raise DigestError(f"bisection answer has a row that is not (tag, p, packed): {row!r}")
        ask = asked.get(tag)  # type: ignore[arg-type]
        if ask is None or prefix not in ask.prefixes:
            raise DigestError(f"bisection answer names a bucket not asked: {tag}/{prefix}")
        answer, depth = got[tag], ask.depth
        for entry in packed.split(","):
            fields = entry.split(":")
            try:
                numbers = [int(x) for x in fields[1:]]
            except ValueError:
                raise DigestError(f"bisection answer has a malformed entry: {entry!r}") from None
            key = prefix + fields[0]
            if len(key) != depth or not set(fields[0]) <= HEX_CHARS:
                raise DigestError(f"bisection answer has a malformed entry: {entry!r}")
            if depth == LIST_DEPTH and len(numbers) == 1:
                answer.listed[key] = numbers[0]
            elif depth < LIST_DEPTH and len(numbers) == 4:  # noqa: PLR2004 - n, hi, lo, fp
                answer.digests[key] = Bucket(*numbers)
            else:
                raise DigestError(f"bisection answer has a malformed entry: {entry!r}")
    return got


def fetch_sql(parts: Iterable[tuple[str, str, bool]], columns: Iterable[str]) -> str:
    """Rows by id for several (tag, table, whole) parts in one answer, each row tagged.

    A whole part's ids (parameter `<tag>_w`) come with every column; a values part's
    (`<tag>_v`, tagged `<tag>.v`) with page_image, entities_json and votes_json, and meeting,
    date and page, never the text: the id hashes it, so the mirror already holds it.
    """
    members = []
    for tag, table, whole in parts:
        wanted = WHOLE if whole else ("id", *UNHASHED_COLUMNS)
        name = f"{tag}_{'w' if whole else 'v'}"
        label = tag if whole else f"{tag}.v"
        select = _select(columns, wanted)
        if not whole:  # meeting, date and page too: few bytes, and they show a stale text
            select = "id,meeting,date,page,null as text," + _select(columns, UNHASHED_COLUMNS)
        members.append(
            f"select '{label}' tag,{select} from {table} where id in (select value from"
            f" {joined(name)})"
        )
    return " union all ".join(members)


def range_values_sql(table: str, columns: Iterable[str], limit: int, *, located: bool) -> str:
    """page_image, entities_json and votes_json of every 12-hex-id row in some buckets (`:r`,
    prefixes joined by "."; "" is every bucket), in id order after `:after`: a range whose rows
    nearly all changed (`located`: with meeting, date and page), or every value for exact=true.

    A column an older site lacks reads as NULL, as the mirror stored it from that site.
    """
    have = set(columns)
    wanted = (*(("meeting", "date", "page") if located else ()), *UNHASHED_COLUMNS)
    values = "".join(f",s.{c} {c}" if c in have else f",null as {c}" for c in wanted)
    return (
        f"select * from (select s.id id{values} from {joined('r')} j join {table} s"
        f" on s.id>=j.value and s.id<j.value||'g') where id>:after and {digest.CONFORMS}"
        f" order by id limit {int(limit)}"
    )
