"""Miss rates of the content fingerprint, old and new, on the changes clerk really makes.

A model of clerk's values (civicband/clerk's extraction: entities_json with persons, orgs and
locations and their confidence; votes_json with motions, tallies, individual votes and raw text;
page_image paths), written as clerk writes them (json.dumps, ensure_ascii). For each change class
a bucket of rows is fingerprinted before and after one change; a miss is a bucket whose sum of
fingerprints did not change. v1 is the fingerprint before issue 17 (civicband 4 samples,
4 vowel counts, no id); v2 is issue 17's (hex-digit counts and first positions, tied to the
id); NEW is civicband.digest.content_fp (v2 plus chains of later occurrences and the tail). A
sample of the NEW one is checked against SQLite itself (digest_sql on an in-memory table): the
figures are what the source sees.

    uv run python bench/fingerprint.py --trials 100000
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import time
from collections.abc import Callable, Mapping
from typing import Any

from civicband import digest

NAMES = (
    "Park", "Ward", "Lee", "Kim", "Diaz", "Chen", "Cruz", "Shah", "Khan", "Ross", "Wong", "Bell",
    "Garcia", "Nguyen", "Okafor", "Patel", "Rossi", "Haddad", "Murphy", "Santos", "Tanaka",
    "Kowalski", "Martinez", "O'Brien", "Núñez", "José", "Müller", "Østby", "Zoë",
)  # fmt: skip
FIRST = ("Jane", "John", "Maria", "Ahmed", "Li", "Sam", "Ana", "Tom", "Eve", "Raj", "Ida")
ORGS = ("Planning Commission", "Caltrans", "Parks Dept", "School Board", "Water District")
PLACES = ("Main St", "Oak Ave", "City Hall", "Riverside Park", "5th Street", "Elm Ct")
RESULTS = ("passed", "failed", "tabled")
MEETINGS = ("City Council", "Planning Commission", "Parks and Recreation Commission")
VOTES = ("aye", "nay", "abstain", "absent")
EMPTY_ENTITIES = json.dumps({"persons": [], "orgs": [], "locations": []})
EMPTY_VOTES = json.dumps({"votes": []})
CONTENT = ("page_image", "entities_json", "votes_json")
ROWS_PER_BUCKET = 4  # only the changed rows move the sum; the rest of a bucket adds a constant


# ---- the fingerprint before this change (for comparison) ---------------------------------------

_OLD_WEIGHTS = (("page_image", 1), ("entities_json", 3), ("votes_json", 7))
_OLD_SAMPLES = ((101, 1, 5), (211, 2, 5), (307, 3, 5), (401, 4, 5))
_OLD_COUNTS = (("a", 1009), ("e", 2003), ("i", 3001), ("o", 4001))


def old_text_fp(value: Any) -> int:
    """The previous fingerprint of one value: length, 4 sampled characters, 4 vowel counts."""
    if value is None:
        return 0
    text = (value if isinstance(value, str) else str(value)).split("\x00", 1)[0]
    length = len(text)
    if not length:
        return 1
    sampled = sum(w * ord(text[a * length // b]) for w, a, b in _OLD_SAMPLES)
    counted = sum(w * text.count(letter) for letter, w in _OLD_COUNTS)
    return 1 + 7 * length + sampled + counted


def old_content_fp(row: Mapping[str, Any]) -> int:
    """The previous fingerprint of a row: no id in it."""
    return sum(w * old_text_fp(row.get(column)) for column, w in _OLD_WEIGHTS)


def v2_content_fp(row: Mapping[str, Any]) -> int:
    """The fingerprint of issue 17 (counts and firsts): the new one less its chains and tail."""
    joined = b"".join(
        stored[1]
        for column, _ in digest.CONTENT_COLUMNS
        if (stored := digest._sqlite_value(row.get(column))) is not None
    )
    values = digest.value_fp(row) - digest._chained(joined.hex().upper())
    return values % digest.MODULUS * digest.id_factor(row.get("id")) % digest.MODULUS


# ---- clerk-shaped values -------------------------------------------------------------------------


def person(rng: random.Random) -> str:
    """A name as clerk's NER finds it: a surname, sometimes with a first name."""
    last = rng.choice(NAMES)
    return f"{rng.choice(FIRST)} {last}" if rng.random() < 0.6 else last


def entities(rng: random.Random) -> dict[str, Any]:
    """clerk's entities_json: persons, orgs and locations with confidences."""

    def found(pool: Callable[[], str], most: int) -> list[dict[str, Any]]:
        return [
            {"text": pool(), "confidence": round(rng.uniform(0.5, 0.99), 2)}
            for _ in range(rng.randint(0, most))
        ]

    return {
        "persons": found(lambda: person(rng), 6),
        "orgs": found(lambda: rng.choice(ORGS), 3),
        "locations": found(lambda: rng.choice(PLACES), 3),
    }


def votes(rng: random.Random) -> dict[str, Any]:
    """clerk's votes_json: motions with mover, seconder, result, tally, members' votes, text."""
    motions = []
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3))):
        members = rng.sample(NAMES, rng.randint(5, 9))
        cast = [rng.choices(VOTES, (85, 10, 3, 2))[0] for _ in members]
        ayes, nays = cast.count("aye"), cast.count("nay")
        motions.append(
            {
                "motion_by": members[0],
                "seconded_by": members[1],
                "result": "passed" if ayes > nays else rng.choice(RESULTS[1:]),
                "tally": {
                    "ayes": ayes,
                    "nays": nays,
                    "abstain": cast.count("abstain") or None,
                    "absent": cast.count("absent") or None,
                },
                "individual_votes": [
                    {"name": m, "vote": v} for m, v in zip(members, cast, strict=True)
                ],
                "raw_text": f"Motion by {members[0]}, seconded by {members[1]}; carried"
                f" {ayes}-{nays}.",
            }
        )
    return {"votes": motions}


def page_image(rng: random.Random) -> str:
    """clerk's page image path."""
    day = f"20{rng.randint(10, 25)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    return f"/_agendas/{rng.choice(MEETINGS)}/{day}/{rng.randint(1, 40)}.png"


def dump(value: Any) -> str:
    """JSON as clerk writes it: json.dumps defaults (ensure_ascii, ", " and ": ")."""
    return json.dumps(value)


def row(rng: random.Random, bucket: str) -> dict[str, Any]:
    """One clerk-shaped row of a bucket; a cache miss leaves the JSON columns empty."""
    hit = rng.random() < 0.8
    return {
        "id": bucket + f"{rng.getrandbits(40):010x}",
        "page_image": page_image(rng),
        "entities_json": dump(entities(rng)) if hit else EMPTY_ENTITIES,
        "votes_json": dump(votes(rng)) if hit and rng.random() < 0.7 else EMPTY_VOTES,
    }


# ---- the changes clerk makes -----------------------------------------------------------------
# Each takes one bucket's rows and changes one of them (two for an exchange) in place; None when
# the rows offer nothing to change that way (the trial is drawn again).

Change = Callable[[random.Random, list[dict[str, Any]]], bool]


def _motions(rng: random.Random, rows: list[dict[str, Any]]) -> tuple[dict, dict] | None:
    """A row with votes and one of its motions (parsed; write the row back with _store)."""
    voted = [r for r in rows if r["votes_json"] != EMPTY_VOTES]
    if not voted:
        return None
    target = rng.choice(voted)
    return target, json.loads(target["votes_json"])


def _store(target: dict[str, Any], parsed: dict[str, Any], before: str) -> bool:
    target["votes_json"] = dump(parsed)
    assert len(target["votes_json"]) == len(before), "a same-length change changed the length"
    return target["votes_json"] != before


def flip(rng: random.Random, rows: list[dict[str, Any]]) -> bool:
    """A cache miss or hit at clerk: entities_json or votes_json between empty and filled."""
    target = rng.choice(rows)
    column = rng.choice(("entities_json", "votes_json"))
    empty = EMPTY_ENTITIES if column == "entities_json" else EMPTY_VOTES
    before = target[column]
    if before != empty:
        target[column] = empty
    else:
        target[column] = dump(entities(rng) if column == "entities_json" else votes(rng))
    return target[column] != before


def tally_corrected(rng: random.Random, rows: list[dict[str, Any]]) -> bool:
    """One aye becomes a nay (7-0 becomes 6-1), the digits' count unchanged."""
    found = _motions(rng, rows)
    if found is None:
        return False
    target, parsed = found
    before = target["votes_json"]
    tally = rng.choice(parsed["votes"])["tally"]
    if not (1 <= tally["ayes"] <= 9 and tally["nays"] <= 8 and tally["ayes"] != 10):
        return False
    tally["ayes"] -= 1
    tally["nays"] += 1
    return _store(target, parsed, before)


def tally_exchanged(rng: random.Random, rows: list[dict[str, Any]]) -> bool:
    """The ayes and nays numbers exchanged."""
    found = _motions(rng, rows)
    if found is None:
        return False
    target, parsed = found
    before = target["votes_json"]
    tally = rng.choice(parsed["votes"])["tally"]
    if len(str(tally["ayes"])) != len(str(tally["nays"])):
        return False
    tally["ayes"], tally["nays"] = tally["nays"], tally["ayes"]
    return _store(target, parsed, before)


def _same_length_name(rng: random.Random, name: str) -> str | None:
    others = [n for n in NAMES if len(n) == len(name) and n != name]
    return rng.choice(others) if others else None


def name_corrected(rng: random.Random, rows: list[dict[str, Any]]) -> bool:
    """A mover, seconder or member's name corrected to another of the same length."""
    found = _motions(rng, rows)
    if found is None:
        return False
    target, parsed = found
    before = target["votes_json"]
    motion = rng.choice(parsed["votes"])
    slot = rng.choice(("motion_by", "seconded_by", "member"))
    holder = rng.choice(motion["individual_votes"]) if slot == "member" else motion
    key = "name" if slot == "member" else slot
    new = _same_length_name(rng, holder[key])
    if new is None or len(json.dumps(new)) != len(json.dumps(holder[key])):
        return False
    holder[key] = new
    return _store(target, parsed, before)


def votes_exchanged(rng: random.Random, rows: list[dict[str, Any]]) -> bool:
    """Two members' votes exchanged (Park aye, Ward nay becomes Park nay, Ward aye)."""
    found = _motions(rng, rows)
    if found is None:
        return False
    target, parsed = found
    before = target["votes_json"]
    members = rng.choice(parsed["votes"])["individual_votes"]
    pairs = [
        (a, b)
        for a in members
        for b in members
        if a is not b and len(a["vote"]) == len(b["vote"]) and a["vote"] != b["vote"]
    ]
    if not pairs:
        return False
    a, b = rng.choice(pairs)
    a["vote"], b["vote"] = b["vote"], a["vote"]
    return _store(target, parsed, before)


def upper_cased(rng: random.Random, rows: list[dict[str, Any]]) -> bool:
    """One letter of a name, or a whole name, changes case (Park to PARK, or park)."""
    target = rng.choice(rows)
    column = rng.choice(("entities_json", "votes_json"))
    value = target[column]
    names = [n for n in NAMES if n.isascii() and f'"{n}' in value]
    if not names:
        return False
    name = rng.choice(names)
    new = rng.choice((name.upper(), name.lower(), name[:-1] + name[-1].upper()))
    if new == name:
        return False
    target[column] = value.replace(f'"{name}', f'"{new}', 1)
    return True


def escape_changed(rng: random.Random, rows: list[dict[str, Any]]) -> bool:
    """A \\uXXXX escape (ensure_ascii) becomes another: ñ corrected to ń, é to è."""
    target = rng.choice(rows)
    column = rng.choice(("entities_json", "votes_json"))
    value = target[column]
    starts = [i for i in range(len(value) - 5) if value.startswith("\\u", i)]
    if not starts:
        return False
    at = rng.choice(starts)
    new = f"\\u{rng.randrange(0xC0, 0x250):04x}"
    if value[at : at + 6].lower() == new:
        return False
    target[column] = value[:at] + new + value[at + 6 :]
    return True


def image_changed(rng: random.Random, rows: list[dict[str, Any]]) -> bool:
    """page_image at the same length: another page, day or meeting of the same length."""
    target = rng.choice(rows)
    before = target["page_image"]
    for _ in range(20):
        candidate = page_image(rng)
        if len(candidate) == len(before) and candidate != before:
            target["page_image"] = candidate
            return True
    return False


def later_motion_votes_exchanged(rng: random.Random, rows: list[dict[str, Any]]) -> bool:
    """Two members' votes exchanged in the second or a later motion of a row."""
    found = _motions(rng, rows)
    if found is None:
        return False
    target, parsed = found
    if len(parsed["votes"]) < 2:
        return False
    before = target["votes_json"]
    members = rng.choice(parsed["votes"][1:])["individual_votes"]
    pairs = [(a, b) for a in members for b in members if a is not b and a["vote"] != b["vote"]]
    pairs = [(a, b) for a, b in pairs if len(a["vote"]) == len(b["vote"])]
    if not pairs:
        return False
    a, b = rng.choice(pairs)
    a["vote"], b["vote"] = b["vote"], a["vote"]
    return _store(target, parsed, before)


def tally_reversed(rng: random.Random, rows: list[dict[str, Any]]) -> bool:
    """A tally one apart read the other way round: 5-4 becomes 4-5."""
    found = _motions(rng, rows)
    if found is None:
        return False
    target, parsed = found
    before = target["votes_json"]
    tally = rng.choice(parsed["votes"])["tally"]
    if tally["ayes"] - tally["nays"] != 1 or tally["ayes"] > 9:
        return False
    tally["ayes"], tally["nays"] = tally["nays"], tally["ayes"]
    return _store(target, parsed, before)


def rows_exchanged(rng: random.Random, rows: list[dict[str, Any]]) -> bool:
    """Two rows of the bucket exchange one column's values."""
    a, b = rng.sample(rows, 2)
    column = rng.choice(CONTENT)
    if a[column] == b[column]:
        return False
    a[column], b[column] = b[column], a[column]
    return True


CLASSES: dict[str, Change] = {
    "empty <-> filled": flip,
    "tally corrected, same length": tally_corrected,
    "ayes and nays exchanged": tally_exchanged,
    "name corrected, same length": name_corrected,
    "two members' votes exchanged": votes_exchanged,
    "votes exchanged, later motion": later_motion_votes_exchanged,
    "tally 5-4 read as 4-5": tally_reversed,
    "upper case changed": upper_cased,
    "\\uXXXX escape changed": escape_changed,
    "page_image changed, same length": image_changed,
    "two rows exchange values": rows_exchanged,
}
FINGERPRINTS: dict[str, Callable[[Mapping[str, Any]], int]] = {
    "v1": old_content_fp,
    "v2": v2_content_fp,
    "new": digest.content_fp,
}


def bucket(rng: random.Random, size: int) -> list[dict[str, Any]]:
    """Rows of one bucket (their ids share the first two hex digits)."""
    prefix = f"{rng.getrandbits(8):02x}"
    return [row(rng, prefix) for _ in range(size)]


def sqlite_sum(rows: list[dict[str, Any]]) -> int:
    """The fingerprint sum SQLite itself gives these rows (digest_sql, as the source sends it)."""
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (id TEXT PRIMARY KEY, page_image TEXT, entities_json TEXT,"
                 " votes_json TEXT)")  # fmt: skip
    conn.executemany(
        "INSERT INTO t VALUES (?, ?, ?, ?)", [(r["id"], *(r[c] for c in CONTENT)) for r in rows]
    )
    sql, params = digest.digest_sql("t", ("id", *CONTENT), digest.IdRange())
    total = sum(fp for _, _, _, _, fp in conn.execute(sql, params))
    conn.close()
    return total


def trial(rng: random.Random, change: Change, size: int) -> tuple[list, list]:
    """One bucket before and after one change of the class (drawn again until one applies)."""
    while True:
        before = bucket(rng, size)
        after = [dict(r) for r in before]
        if change(rng, after):
            return before, after


def measure(trials: int, checks: int, size: int, seed: str) -> None:
    """Print, per class, each fingerprint's misses; check a sample against SQLite."""
    print(
        f"{trials:,} trials a class, buckets of {size} clerk-shaped rows, seed {seed!r};"
        f" {checks} trials a class also run through SQLite {sqlite3.sqlite_version}"
    )
    heads = "".join(f"{k + ' misses':>18}" for k in FINGERPRINTS)
    print(f"{'change':<34}{heads}  new < 1e-4?")
    for name, change in CLASSES.items():
        rng = random.Random(f"{seed}:{name}")
        misses = dict.fromkeys(FINGERPRINTS, 0)
        started = time.monotonic()
        for number in range(trials):
            before, after = trial(rng, change, size)
            changed = [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b]
            for label, fp in FINGERPRINTS.items():
                old = sum(fp(before[i]) for i in changed)
                new = sum(fp(after[i]) for i in changed)
                misses[label] += old == new
            if number < checks:
                for rows in (before, after):
                    python = sum(digest.content_fp(r) for r in rows)
                    assert sqlite_sum(rows) == python, f"SQLite disagrees on {name}"
        bound = 3 / trials  # no miss in n trials: below 3/n with 95 % confidence
        rate = misses["new"] / trials
        verdict = "yes" if (rate == 0 and bound <= 1e-4) or (0 < rate < 1e-4) else "NO"
        cells = "".join(f"{f'{misses[k]} ({misses[k] / trials:.1e})':>18}" for k in FINGERPRINTS)
        print(
            f"{name:<34}{cells}  {verdict}  ({time.monotonic() - started:.0f} s)",
            flush=True,
        )


def main() -> None:
    """Measure every class and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=100_000, help="trials per change class")
    parser.add_argument("--checks", type=int, default=300, help="of them, checked in SQLite")
    parser.add_argument("--bucket", type=int, default=ROWS_PER_BUCKET, help="rows per bucket")
    parser.add_argument("--seed", default="fingerprint")
    args = parser.parse_args()
    measure(args.trials, args.checks, args.bucket, args.seed)


if __name__ == "__main__":
    main()
