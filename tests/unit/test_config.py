"""One settings check for every spider and command, and CIVICBAND_DB_TIMEOUT bounding connects."""

from __future__ import annotations

import psycopg
import pytest
from scrapy.settings import Settings

from civicband import db
from civicband import settings as project
from civicband.args import ArgumentError
from civicband.config import NUMBER_SETTINGS, check_settings
from civicband.spiders.civicband import CivicbandSpider
from civicband.spiders.sites import SitesSpider


def project_settings(**overrides: object) -> Settings:
    """The project's settings with these overrides, as `-s NAME=value` gives them."""
    values = {name: getattr(project, name) for name in dir(project) if name.isupper()}
    return Settings({**values, **overrides})


@pytest.mark.parametrize("name", sorted(NUMBER_SETTINGS))
def test_every_spider_refuses_every_bad_numeric_setting_by_name(name):
    bad = project_settings(**{name: "x"})
    with pytest.raises(ArgumentError, match=rf"^{name}: expected"):
        SitesSpider.check_arguments({}, bad)
    with pytest.raises(ArgumentError, match=rf"^{name}: expected"):
        CivicbandSpider.check_arguments({"subdomain": "oakland.ca"}, bad)
    with pytest.raises(ArgumentError, match=rf"^{name}: expected"):
        check_settings(bad)


def test_the_project_defaults_pass_and_the_retry_and_jsonrpc_settings_are_checked_too():
    check_settings(project_settings())
    with pytest.raises(ArgumentError, match="^CIVICBAND_BACKOFF_MAX"):
        check_settings(project_settings(CIVICBAND_BACKOFF_BASE=10, CIVICBAND_BACKOFF_MAX=5))
    with pytest.raises(ArgumentError, match="^JSONRPC_PORT"):
        SitesSpider.check_arguments({}, project_settings(JSONRPC_PORT="many"))


@pytest.mark.parametrize(("seconds", "wanted"), [(0.1, 1), (2.4, 2), (10.0, 10), (30.0, 30)])
def test_the_timeout_setting_becomes_libpqs_connect_timeout(seconds, wanted):
    assert db.connect_timeout(seconds) == wanted


def test_connecting_waits_the_timeout_setting_not_a_fixed_ten_seconds(monkeypatch):
    asked: dict[str, object] = {}

    def refuse(url: str, **kwargs: object) -> None:
        asked.update(kwargs)
        raise psycopg.OperationalError("connection timeout expired")

    monkeypatch.setattr(psycopg, "connect", refuse)
    with pytest.raises(db.DatabaseUnavailable, match="^cannot connect to postgresql://mirror@h/"):
        db.connect("postgresql://mirror@h/civicband", timeout=2)
    assert asked["connect_timeout"] == 2
