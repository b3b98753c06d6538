"""The SQL must travel inside the built package: scrapyd runs eggs, pip installs wheels.

Both artefacts are built once per session by tests/artefacts.py; the migrations expected
are whatever sql/migrations/ holds when the tests run.
"""

from pathlib import Path

import pytest

from tests import artefacts

SETTINGS = "civicband.settings"  # pyproject's [project.entry-points.scrapy] settings
ARTEFACTS = pytest.mark.parametrize("kind", ["wheel", "egg"])


@pytest.fixture(scope="session")
def wheel(pytestconfig, tmp_path_factory) -> artefacts.Artefact:
    return artefacts.wheel(pytestconfig, tmp_path_factory)


@pytest.fixture(scope="session")
def egg(pytestconfig, tmp_path_factory) -> artefacts.Artefact:
    return artefacts.egg(pytestconfig, tmp_path_factory)


@ARTEFACTS
def test_ships_every_migration_schema_and_queries(request, kind):
    artefact = request.getfixturevalue(kind)
    shipped = {name for name in artefact.names() if name.startswith("civicband/sql/")}
    migrations = {f"civicband/sql/migrations/{name}" for name in artefacts.migrations_on_disk()}
    expected = migrations | {"civicband/sql/schema.sql", "civicband/sql/queries.sql"}
    assert not expected - shipped, f"the {kind} lacks {sorted(expected - shipped)}"
    extra = {name for name in shipped - expected if name.startswith("civicband/sql/migrations/")}
    assert not extra, f"the {kind} ships migrations that sql/migrations/ lacks: {sorted(extra)}"


@ARTEFACTS
def test_declares_the_scrapy_settings_entry_point(request, kind):
    artefact = request.getfixturevalue(kind)
    found = artefact.entry_points("scrapy")
    assert found.get("settings") == SETTINGS, (
        f"the {kind}'s {artefact.metadata_dir}/entry_points.txt has scrapy entry points "
        f"{found}, not settings = {SETTINGS}: scrapyd would not find the project's settings"
    )


def test_egg_loads_the_schema_migrations_and_queries(pytestconfig, egg):
    """What scrapyd gets: civicband imported from the egg alone, and its SQL read from there."""
    loaded = artefacts.load_from(pytestconfig, egg)
    artefacts.check_sql_came_from(egg, loaded)


def test_egg_settings_import_from_the_egg(pytestconfig, egg):
    """scrapyd imports the module the egg's settings entry point names; it must be there."""
    settings = artefacts.load_from(pytestconfig, egg)["settings"]
    assert settings["module"], "the egg declares no scrapy settings entry point"
    assert not settings["error"], (
        f"importing {settings['module']} from the egg: {settings['error']}"
    )
    assert Path(settings["file"]).is_relative_to(egg.path), (
        f"{settings['module']} came from {settings['file']}, not from the egg"
    )
