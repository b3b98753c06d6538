"""`scrapy jobs` options: each is checked, and a bad one is one line naming it (no database)."""

from __future__ import annotations

import argparse

import pytest

from civicband.args import ArgumentError
from civicband.commands.jobs import parse_filters


@pytest.mark.parametrize(
    ("option", "value", "wanted"),
    [
        ("status", "Completed ", "completed"),
        ("document_type", " MINUTES", "minutes"),
        ("subdomain", "Oakland.CA", "oakland.ca"),
        ("limit", " 25 ", 25),
    ],
)
def test_a_good_option_becomes_its_query_parameter(option, value, wanted):
    opts = argparse.Namespace(status=None, document_type=None, subdomain=None, limit=None)
    setattr(opts, option, value)
    filters = parse_filters(opts)
    assert filters[option] == wanted
    assert [name for name, given in filters.items() if given is not None] == [option]


@pytest.mark.parametrize(
    ("option", "value", "named"),
    [
        ("status", "done", "--status:"),
        ("document_type", "agendas", "--type:"),
        ("document_type", "both", "--type:"),
        ("subdomain", "oakland.ca/../x", "--subdomain:"),
        ("subdomain", "oak land.ca", "--subdomain:"),
        ("limit", "0", "--limit:"),
        ("limit", "ten", "--limit:"),
        ("limit", "²", "--limit:"),
    ],
)
def test_a_bad_option_is_one_line_naming_it(option, value, named):
    opts = argparse.Namespace(status=None, document_type=None, subdomain=None, limit=None)
    setattr(opts, option, value)
    with pytest.raises(ArgumentError, match=f"^{named}"):
        parse_filters(opts)
