"""`scrapy jobs` options: each is checked, and a bad one is one line naming it (no database)."""

from __future__ import annotations

import argparse

import pytest

from civicband.args import ArgumentError
from civicband.commands.jobs import parse_filters


@pytest.mark.parametrize(
    ("option", "value", "named"),
    [
        ("status", "Completed ", None),
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
def test_each_option_is_checked(option, value, named):
    opts = argparse.Namespace(status=None, document_type=None, subdomain=None, limit=None)
    setattr(opts, option, value)
    if named is None:
        assert parse_filters(opts)[option] == value.strip().lower()
        return
    with pytest.raises(ArgumentError, match=f"^{named}"):
        parse_filters(opts)
