"""`scrapy changes` options and lines: each option checked, one-line errors, exit 2."""

from __future__ import annotations

import argparse
import datetime
import io
import json

import pytest
from scrapy.settings import Settings

from civicband import settings as project
from civicband.args import ArgumentError
from civicband.commands.changes import (
    DELETE_KEYS,
    UPSERT_KEYS,
    Command,
    as_line,
    parse_options,
    write_changes,
)


def options(**given: str | None) -> argparse.Namespace:
    values = {"since": "0", "subdomain": None, "document_type": None, "limit": None}
    return argparse.Namespace(**{**values, **given})


def test_good_options_become_query_parameters():
    parsed = parse_options(
        options(since=" 42 ", subdomain="Oakland.CA", document_type="Minutes", limit="10")
    )
    assert parsed == {
        "since": 42,
        "subdomain": "oakland.ca",
        "document_type": "minutes",
        "limit": 10,
    }
    assert parse_options(options()) == {
        "since": 0,
        "subdomain": None,
        "document_type": None,
        "limit": None,
    }


@pytest.mark.parametrize(
    ("option", "value", "named"),
    [
        ("since", None, "--since: required"),
        ("since", "-1", "--since:"),
        ("since", "1.5", "--since:"),
        ("since", "abc", "--since:"),
        ("since", "²", "--since:"),
        ("document_type", "agendas", "--type:"),
        ("document_type", "both", "--type:"),
        ("subdomain", "https://oakland.ca", "--subdomain:"),
        ("subdomain", "oak land.ca", "--subdomain:"),
        ("limit", "0", "--limit:"),
        ("limit", "ten", "--limit:"),
    ],
)
def test_each_bad_option_is_one_line_naming_it(option, value, named):
    with pytest.raises(ArgumentError, match=f"^{named}") as raised:
        parse_options(options(**{option: value}))
    assert "\n" not in str(raised.value)


def test_lines_carry_each_ops_keys_in_order_with_iso_times():
    when = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    upsert = {
        "version": 7,
        "op": "upsert",
        "subdomain": "a.ca",
        "document_type": "agenda",
        "id": "0123456789ab",
        "meeting": "Council",
        "date": datetime.date(2025, 5, 6),
        "page": 3,
        "text": "Caf\u00e9",
        "page_image": "/p.png",
        "entities_json": '{"persons": []}',
        "votes_json": None,
        "first_seen": when,
        "changed": when,
        "removed": None,
    }
    delete = {**dict.fromkeys(UPSERT_KEYS), "version": 8, "op": "delete", "removed": when}
    delete |= {"subdomain": "a.ca", "document_type": "minutes", "id": "ba9876543210"}
    out = io.StringIO()
    assert write_changes(iter([upsert, delete]), out) == 2
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert list(first) == list(UPSERT_KEYS)
    assert (first["date"], first["first_seen"], first["text"]) == (
        "2025-05-06",
        "2026-01-02T03:04:05+00:00",
        "Caf\u00e9",
    )
    assert list(second) == list(DELETE_KEYS)
    assert second["removed"] == "2026-01-02T03:04:05+00:00"
    assert json.loads(as_line(upsert))["version"] == 7


def run_command(capsys, settings: dict, *args: str, **given: str | None) -> tuple[int, str, str]:
    command = Command()
    values = {name: getattr(project, name) for name in dir(project) if name.isupper()}
    command.settings = Settings({**values, **settings})  # the project's, as scrapy gives them
    command.run(list(args), options(**given))
    captured = capsys.readouterr()
    return command.exitcode, captured.out, captured.err


def test_a_bad_option_exits_2_with_one_line_and_touches_no_database(capsys):
    # The URL would fail to connect: the option is refused before any connection is tried.
    url = {"CIVICBAND_DATABASE_URL": "postgresql://127.0.0.1:9/none"}
    code, out, err = run_command(capsys, url, since="x")
    assert (code, out) == (2, "")
    assert err.startswith("civicband: error: --since:") and err.count("\n") == 1
    code, out, err = run_command(capsys, url, "extra")
    assert (code, out) == (2, "")
    assert "unknown argument 'extra'" in err and err.count("\n") == 1


def test_an_unreachable_database_exits_2_with_one_line_without_the_password(capsys):
    url = "postgresql://feed:s3cret@127.0.0.1:9/mirror"
    code, out, err = run_command(capsys, {"CIVICBAND_DATABASE_URL": url})
    assert (code, out) == (2, "")
    assert err.startswith("civicband: error: cannot connect to") and err.count("\n") == 1
    assert "s3cret" not in err
