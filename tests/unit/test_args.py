"""Spider arguments: every bad value is refused with one line naming the argument."""

import pytest

from civicband.args import ArgumentError, parse_arguments
from civicband.config import check_number_settings


def test_defaults():
    args = parse_arguments({"subdomain": "oakland.ca"})
    assert args.subdomains == ["oakland.ca"]
    assert args.document_types == ("agenda", "minutes")
    assert args.batch_size is None
    assert (args.resume, args.verify_only, args.repair) == (False, False, False)


def test_lists_types_and_booleans():
    args = parse_arguments(
        {
            "subdomain": "Oakland.ca, berkeley.ca,oakland.ca",
            "document_type": "agenda",
            "batch_size": "500",
            "resume": "YES",
            "repair": "0",
        }
    )
    assert args.subdomains == ["oakland.ca", "berkeley.ca"]
    assert args.document_types == ("agenda",)
    assert args.batch_size == 500
    assert args.resume is True and args.repair is False


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({}, "subdomain"),
        ({"subdomain": ""}, "subdomain"),
        ({"subdomain": "http://evil.example/x"}, "subdomain"),
        ({"subdomain": "a.ca/../b"}, "subdomain"),
        ({"subdomain": "evil.com:8080"}, "subdomain"),
        ({"subdomain": "user@evil.com"}, "subdomain"),
        ({"subdomain": "a..b"}, "subdomain"),
        ({"subdomain": "all,oakland.ca"}, "subdomain"),
        ({"subdomain": "a.ca", "document_type": "agendas"}, "document_type"),
        ({"subdomain": "a.ca", "batch_size": "0"}, "batch_size"),
        ({"subdomain": "a.ca", "batch_size": "1001"}, "batch_size"),
        ({"subdomain": "a.ca", "batch_size": "ten"}, "batch_size"),
        ({"subdomain": "a.ca", "resume": "maybe"}, "resume"),
        ({"subdomain": "a.ca", "verify_only": "2"}, "verify_only"),
        ({"subdomain": "a.ca", "verfy_only": "true"}, "verfy_only"),  # a typo writes nothing
        ({"subdomain": "a.ca", "Full": "true"}, "Full"),
    ],
)
def test_bad_arguments_name_themselves_in_one_line(kwargs, named):
    with pytest.raises(ArgumentError) as raised:
        parse_arguments(kwargs)
    message = str(raised.value)
    assert message.startswith(f"{named}:")
    assert "\n" not in message


def test_arguments_deployment_tools_add_are_accepted():
    # scrapyd adds _job to every schedule.json call; other underscored names could shadow the
    # spider's own attributes (-a _fail=x) and are refused like any unknown argument.
    args = parse_arguments({"subdomain": "a.ca", "_job": "6487ec79"})
    assert args.subdomains == ["a.ca"]
    with pytest.raises(ArgumentError, match="^_fail: unknown argument"):
        parse_arguments({"subdomain": "a.ca", "_fail": "x"})


@pytest.mark.parametrize("raw", ["inf", "-inf", "nan", "Infinity"])
def test_numeric_settings_refuse_what_is_not_a_finite_number(raw):
    with pytest.raises(ArgumentError, match=r"^CIVICBAND_DB_TIMEOUT: expected a number"):
        check_number_settings({"CIVICBAND_DB_TIMEOUT": raw}, ["CIVICBAND_DB_TIMEOUT"])


@pytest.mark.parametrize(("raw", "ok"), [("30", True), ("0", True), ("0.5", True), ("-1", False)])
def test_tombstone_days_is_a_number_from_zero_up(raw, ok):
    settings = {"CIVICBAND_TOMBSTONE_DAYS": raw}
    if ok:
        check_number_settings(settings, ["CIVICBAND_TOMBSTONE_DAYS"])
        return
    with pytest.raises(ArgumentError, match=r"^CIVICBAND_TOMBSTONE_DAYS: expected a number from 0"):
        check_number_settings(settings, ["CIVICBAND_TOMBSTONE_DAYS"])
