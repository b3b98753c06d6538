"""The README promises settings, spider arguments and stats: each must exist and have a test.

This lists the README's settings, arguments and stats tables and fails on one that no test
mentions, on one the code does not have, and on a setting or stat the code has that the
README does not document.
"""

from __future__ import annotations

import re
from pathlib import Path

from civicband import settings as project

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
THIS = Path(__file__).name


def table(heading: str) -> list[str]:
    """The first column of the table under a heading, each cell's backticked names."""
    section = README.split(f"\n{heading}\n", 1)[1]
    section = re.split(r"\n#{2,3} ", section, maxsplit=1)[0]
    names: list[str] = []
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        cell = line.split("|")[1]
        found = re.findall(r"`([^`]+)`", cell)
        # `civicband/verify/passed`, `/warned`: the rest share the first one's prefix.
        prefix = found[0].rsplit("/", 1)[0] if found and "/" in found[0] else ""
        names += [prefix + name if name.startswith("/") else name for name in found]
    return names


def text_of_tests() -> str:
    files = [p for p in (ROOT / "tests").rglob("*.py") if p.name != THIS]
    return "\n".join(p.read_text() for p in files)


def code_text() -> str:
    return "\n".join(p.read_text() for p in (ROOT / "civicband").rglob("*.py"))


def test_every_readme_setting_exists_and_is_tested():
    settings = table("## Settings")
    assert len(settings) >= 25, settings
    text = text_of_tests()
    missing = [name for name in settings if name not in text]
    assert missing == [], f"settings the README documents that no test mentions: {missing}"
    unknown = [name for name in settings if not hasattr(project, name)]
    assert unknown == [], f"settings the README documents that the project lacks: {unknown}"


def test_every_project_setting_is_documented():
    documented = set(table("## Settings"))
    own = [n for n in dir(project) if n.startswith(("CIVICBAND_", "JSONRPC_"))]
    assert own and sorted(set(own) - documented) == []


def test_every_spider_argument_is_documented_and_tested():
    arguments = table("### Spider arguments")
    assert {"subdomain", "full", "repair", "verify_only", "resume", "allow_shrink"} <= set(
        arguments
    )
    text = text_of_tests()
    missing = [name for name in arguments if f"{name}=" not in text]
    assert missing == [], f"arguments no test passes: {missing}"


def test_every_readme_stat_is_tested_and_every_stat_the_code_keeps_is_documented():
    stats = table("## Stats")
    assert len(stats) >= 40, stats
    text = text_of_tests()
    missing = sorted({name for name in stats if name not in text})
    assert missing == [], f"stats the README documents that no test mentions: {missing}"
    code = code_text()
    kept = set(re.findall(r'"(civicband/[a-z_]+/[a-z_]+)"', code))
    # Stats named by an f-string: jobs by the verdict's job status, verify by outcome and count.
    kept |= {f"civicband/jobs/{s}" for s in ("completed", "failed")}
    kept |= {f"civicband/verify/{s}" for s in ("passed", "warned", "failed", "unknown")}
    kept |= {f"civicband/verify/{s}" for s in ("missing", "extra", "stale", "rejected")}
    undocumented = sorted(kept - set(stats))
    assert undocumented == [], (
        f"stats the code keeps that the README does not document: {undocumented}"
    )
