"""Build the artefacts that leave this repository, and read civicband's SQL back out of them.

pip installs the wheel and scrapyd runs the egg that scrapyd-deploy builds, so the packaging
tests look at those, never at the checkout. Each artefact is built at most once per pytest
session, however many test modules ask for it (a fixture imported into two modules would be
two fixtures, each building its own copy), and a failed build is reported once per test
that needs it without being retried.

The builds run on a copy of the working tree, so leftovers in the checkout's build/ and
*.egg-info/ cannot leak into the artefact, and a concurrent test session in the same
checkout cannot race this one over those folders.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
MIGRATIONS = ROOT / "sql" / "migrations"
BUILD_TIMEOUT = 240  # seconds; a cold uv cache downloads scrapyd-client and scrapy

_CACHE = pytest.StashKey[dict[str, Any]]()


def uv() -> str:
    """uv's path: `uv run` exports it as UV to its children; otherwise whatever is on PATH."""
    found = os.environ.get("UV") or shutil.which("uv")
    if not found:
        pytest.fail("cannot find uv: run the tests with `uv run pytest` or put uv on PATH")
    return found


def migrations_on_disk() -> dict[str, str]:
    """Every migration file in sql/migrations/ as it is now: {file name: text}."""
    found = {path.name: path.read_text(encoding="utf-8") for path in MIGRATIONS.glob("*.sql")}
    assert found, f"no migrations found in {MIGRATIONS}"
    return found


@dataclass(frozen=True)
class Artefact:
    """A built wheel or egg: the archive, and where its metadata folder is inside it."""

    path: Path
    metadata_dir: str  # "civicband-0.1.0.dist-info" or "EGG-INFO"

    def names(self) -> set[str]:
        with zipfile.ZipFile(self.path) as archive:
            return set(archive.namelist())

    def entry_points(self, group: str) -> dict[str, str]:
        """The entry points the archive declares in `group`, read by importlib.metadata."""
        where = zipfile.Path(self.path, self.metadata_dir + "/")
        found = metadata.PathDistribution(where).entry_points.select(group=group)
        return {entry.name: entry.value for entry in found}


def wheel(config: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Artefact:
    """The wheel `uv build --wheel` makes of this project, as pip would install it."""

    def build() -> Artefact:
        source = _copy_of_working_tree(tmp_path_factory)
        out = tmp_path_factory.mktemp("wheel")
        _run([uv(), "build", "--wheel", "--out-dir", str(out), str(source)], "uv build --wheel")
        wheels = list(out.glob("*.whl"))
        if len(wheels) != 1:
            pytest.fail(f"uv build --wheel left {len(wheels)} wheels in {out}, expected one")
        with zipfile.ZipFile(wheels[0]) as archive:
            dist_info = {name.split("/")[0] for name in archive.namelist() if ".dist-info/" in name}
        if len(dist_info) != 1:
            pytest.fail(f"{wheels[0].name} has {len(dist_info)} .dist-info folders: {dist_info}")
        return Artefact(wheels[0], dist_info.pop())

    return _once(config, "wheel", build)


def egg(config: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Artefact:
    """The egg scrapyd-deploy uploads to scrapyd, built by the README's deploy command."""

    def build() -> Artefact:
        source = _copy_of_working_tree(tmp_path_factory)
        out = tmp_path_factory.mktemp("egg")
        target = out / "civicband.egg"
        command = [uv(), "tool", "run", "--from", "scrapyd-client", "scrapyd-deploy"]
        # -d lets setup.py's output through, for the failure message. --build-egg never
        # deletes its scrapydeploy-* folder, so TMPDIR keeps it under pytest's tmp.
        _run(
            [*command, "-d", "--build-egg", str(target)],
            "scrapyd-deploy --build-egg",
            cwd=source,
            env={**os.environ, "TMPDIR": str(out)},
        )
        if not target.is_file():
            pytest.fail(f"scrapyd-deploy --build-egg exited 0 but wrote no {target}")
        return Artefact(target, "EGG-INFO")

    return _once(config, "egg", build)


def load_from(config: pytest.Config, artefact: Artefact) -> dict[str, Any]:
    """What civicband.db gives when civicband is imported from `artefact` alone.

    A fresh interpreter gets the archive first on sys.path and the test environment's
    site-packages after it, for psycopg and scrapy. -I -S and a bare site-packages path keep
    out the current directory, PYTHONPATH and the .pth files, among them the editable
    install's hook that would import civicband from the checkout. Also imports the module
    the archive's scrapy `settings` entry point names, as scrapyd does, if there is one:
    "settings" says which module, the file it came from, or why it would not import.
    """

    def load() -> dict[str, Any]:
        settings_module = artefact.entry_points("scrapy").get("settings", "")
        paths = sysconfig.get_paths()
        dependencies = list(dict.fromkeys([paths["purelib"], paths["platlib"]]))
        command = [sys.executable, "-I", "-S", "-c", _LOADER, str(artefact.path), settings_module]
        done = _run(
            [*command, *dependencies],
            f"loading civicband from {artefact.path.name}",
            cwd=artefact.path.parent,
        )
        try:
            return json.loads(done.stdout)
        except json.JSONDecodeError:
            pytest.fail(f"the loader printed no JSON:\n{done.stdout}\n{done.stderr}")

    return _once(config, f"load {artefact.path}", load)


_LOADER = """
import importlib, json, sys

archive, settings_module, *dependencies = sys.argv[1:]
sys.path[:0] = [archive]
sys.path.extend(dependencies)

import civicband
import civicband.db as db

files = {"civicband": civicband.__file__, "civicband.db": db.__file__}
settings = {"module": settings_module, "file": None, "error": None}
if settings_module:
    try:
        settings["file"] = importlib.import_module(settings_module).__file__
    except Exception as error:
        settings["error"] = f"{type(error).__name__}: {error}"
json.dump({
    "files": files,
    "settings": settings,
    "schema": db.schema_sql(),
    "migrations": db.migration_files(),
    "queries": db.queries(),
}, sys.stdout)
"""


def _once(config: pytest.Config, key: str, make):
    """make()'s result, computed on first use in this session; a failure is remembered too."""
    cache = config.stash.setdefault(_CACHE, {})
    if key not in cache:
        try:
            cache[key] = ("ok", make())
        except pytest.fail.Exception as failure:
            cache[key] = ("failed", str(failure))
    outcome, value = cache[key]
    if outcome == "failed":
        pytest.fail(value, pytrace=False)
    return value


def _copy_of_working_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The working tree (uncommitted files included) minus .git and what .gitignore names."""
    patterns = [".git"]
    ignore_file = ROOT / ".gitignore"
    if ignore_file.exists():
        for line in ignore_file.read_text().splitlines():
            line = line.strip().strip("/")
            # Only plain name patterns: anything subtler is copied, which is merely slower.
            if line and not line.startswith(("#", "!")) and "/" not in line:
                patterns.append(line)
    target = tmp_path_factory.mktemp("source") / ROOT.name
    shutil.copytree(ROOT, target, symlinks=True, ignore=shutil.ignore_patterns(*patterns))
    return target


def _run(command: list[str], what: str, **kwargs) -> subprocess.CompletedProcess[str]:
    shown = shlex.join(arg if len(arg) < 200 else "<script>" for arg in command)
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=BUILD_TIMEOUT, **kwargs
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{what} took over {BUILD_TIMEOUT} s: {shown}")
    except OSError as error:
        pytest.fail(f"{what}: cannot run {shown}: {error}")
    if done.returncode != 0:
        pytest.fail(
            f"{what} failed with exit code {done.returncode}: {shown}\n"
            f"--- stdout ---\n{done.stdout[-4000:]}\n--- stderr ---\n{done.stderr[-4000:]}"
        )
    return done


def check_sql_came_from(artefact: Artefact, loaded: dict[str, Any]) -> None:
    """Assert `loaded` (from load_from) was imported from `artefact` and is today's SQL."""
    from civicband import db  # the checkout's: its parser gives what queries() should

    outside = {
        module: file
        for module, file in loaded["files"].items()
        if not Path(file).is_relative_to(artefact.path)
    }
    assert not outside, f"imported from outside {artefact.path}, not from the artefact: {outside}"

    on_disk = {}
    for file_name, text in migrations_on_disk().items():
        version, _, name = file_name.removesuffix(".sql").partition("_")
        assert version.isdigit() and name, f"sql/migrations/{file_name} is not NNNN_name.sql"
        on_disk[(int(version), name)] = text
    shipped = {(version, name): text for version, name, text in loaded["migrations"]}
    assert sorted(shipped) == sorted(on_disk), (
        f"migration_files() from {artefact.path.name} gives {sorted(shipped)}, "
        f"but sql/migrations/ holds {sorted(on_disk)}"
    )
    stale = [key for key, text in on_disk.items() if shipped[key] != text]
    assert not stale, f"{artefact.path.name} ships other text than sql/migrations/ for {stale}"

    schema = (ROOT / "sql" / "schema.sql").read_text(encoding="utf-8")
    assert loaded["schema"] == schema, f"schema_sql() from {artefact.path.name} != sql/schema.sql"
    expected = db.queries()
    assert expected, "sql/queries.sql has no named queries"
    assert loaded["queries"] == expected, (
        f"queries() from {artefact.path.name} differs from sql/queries.sql: "
        f"{sorted(set(loaded['queries']) ^ set(expected)) or 'same names, other text'}"
    )
