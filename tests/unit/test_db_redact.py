"""A database URL in a log line or an error: its password never shows, in any spelling."""

from __future__ import annotations

import psycopg.conninfo
import pytest

from civicband.db import passwords, redact


@pytest.mark.parametrize(
    ("url", "shown", "secret"),
    [
        ("postgresql://mirror@db/civicband", "postgresql://mirror@db/civicband", None),
        (
            "postgresql://mirror:s3cret@db:5433/civicband",
            "postgresql://mirror:***@db:5433/civicband",
            "s3cret",
        ),
        ("postgresql://db/x?password=q1&user=u", "postgresql://db/x?password=***&user=u", "q1"),
        ("postgresql://db/x?user=u&password=q1", "postgresql://db/x?user=u&password=***", "q1"),
        ("host=db password=hunter2 user=u", "host=db password=*** user=u", "hunter2"),
        ("host=db password='s p@ce' user=u", "host=db password=*** user=u", "s p@ce"),
        ("host=db password = 'a \\'b c' user=u", "host=db password=*** user=u", "a 'b c"),
        ("dbname=civicband", "dbname=civicband", None),
        # libpq's grammar, not urllib's: "#" and "?" are part of a URL's password.
        ("postgresql://mirror:p#ss@db/civicband", "postgresql://mirror:***@db/civicband", "p#ss"),
        ("postgresql://u:p?ss@db/x", "postgresql://u:***@db/x", "p?ss"),
        ("postgres://u:p:w@db:5432/x", "postgres://u:***@db:5432/x", "p:w"),
        ("postgresql://db:5432/x", "postgresql://db:5432/x", None),
        ("postgresql://db/x?password=a#b&user=u", "postgresql://db/x?password=***&user=u", "a#b"),
        # A key=value string is not a URL for holding "://" somewhere.
        ("host=db password=a://b user=u", "host=db password=*** user=u", "a://b"),
        ("dbname=postgresql://u:pw@h/db", "dbname=postgresql://u:***@h/db", "pw"),
        ("postgresql://u:x&password=y@h", "postgresql://u:***@h", "x&password=y"),
        ("postgresql://h/db?pass%77ord=secret", "postgresql://h/db?pass%77ord=***", "secret"),
        ("postgresql://u:sec\tret@h", "postgresql://u:***@h", "sec\tret"),
        ("postgresql://us\ter:secret@h", "postgresql://us\ter:***@h", "secret"),
        ("host=h password=a\\ b user=u", "host=h password=*** user=u", "a b"),
        ("host=h password=abc\x1cdef user=u", "host=h password=*** user=u", "abc\x1cdef"),
        ("host=h password=abc\xa0def user=u", "host=h password=*** user=u", "abc\xa0def"),
        # Not readable by libpq: still one line, and still no password.
        ("postgresql://u:pw@[::1/x", "postgresql://u:***@[::1/x", "pw"),
    ],
)
def test_redact_hides_the_password_whole(url: str, shown: str, secret: str | None) -> None:
    assert redact(url) == shown
    if secret is None:
        assert passwords(url) == []
    else:
        assert secret in passwords(url)
        assert secret not in redact(url)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://mirror:p#ss@db/civicband",
        "postgresql://u:p?ss@db/x",
        "postgresql://u:pa%24%24@db/x",
        "postgresql://db/x?user=u&password=a%26b",
        "host=db password=a://b user=u",
        "host=db password='s p@ce' user=u",
        "postgresql://h/db?%70assword=se%63ret",
        "postgresql://u:sec\tret@h",
        "host=h password=a\\ b user=u",
        "host=h password=abc\x1cdef user=u",
    ],
)
def test_passwords_holds_the_one_libpq_reads(url: str) -> None:
    """libpq's own parser is the judge of what the password is."""
    assert psycopg.conninfo.conninfo_to_dict(url)["password"] in passwords(url)
    assert not [spelling for spelling in passwords(url) if spelling in redact(url)]


def test_passwords_knows_every_spelling() -> None:
    assert passwords("") == []
    assert passwords("postgresql://mirror@db/civicband") == []
    assert set(passwords("postgresql://u:pa%24%24@db/x")) == {"pa%24%24", "pa$$"}
    assert passwords("postgresql://db/x?password=q1&user=u") == ["q1"]
    assert passwords("host=db password=hunter2 user=u") == ["hunter2"]
    assert set(passwords("host=db password='a \\'b' user=u")) >= {"a 'b", "a \\'b"}
