"""A database URL in a log line or an error: its password never shows, in any spelling."""

from __future__ import annotations

import pytest

from civicband.db import passwords, redact


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://mirror@db/civicband", "postgresql://mirror@db/civicband"),
        (
            "postgresql://mirror:s3cret@db:5433/civicband",
            "postgresql://mirror:***@db:5433/civicband",
        ),
        ("postgresql://db/x?password=q1&user=u", "postgresql://db/x?password=***&user=u"),
        ("postgresql://db/x?user=u&password=q1", "postgresql://db/x?user=u&password=***"),
        ("host=db password=hunter2 user=u", "host=db password=*** user=u"),
        ("host=db password='s p@ce' user=u", "host=db password=*** user=u"),
        ("host=db password = 'a \\'b c' user=u", "host=db password=*** user=u"),
        ("dbname=civicband", "dbname=civicband"),
    ],
)
def test_redact_hides_the_password_whole(url: str, shown: str) -> None:
    assert redact(url) == shown
    for password in passwords(url):
        assert password not in redact(url)


def test_passwords_knows_every_spelling() -> None:
    assert passwords("") == []
    assert passwords("postgresql://mirror@db/civicband") == []
    assert set(passwords("postgresql://u:pa%24%24@db/x")) == {"pa%24%24", "pa$$"}
    assert passwords("postgresql://db/x?password=q1&user=u") == ["q1"]
    assert passwords("host=db password=hunter2 user=u") == ["hunter2"]
    assert set(passwords("host=db password='a \\'b' user=u")) >= {"a 'b", "a \\'b"}
