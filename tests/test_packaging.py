"""The SQL must travel inside the built package: scrapyd runs eggs, pip installs wheels."""

import os
import shutil
import subprocess
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UV = os.environ.get("UV") or shutil.which("uv") or "uv"  # `uv run` tells its children where it is
SQL = {
    "civicband/sql/queries.sql",
    "civicband/sql/schema.sql",
    "civicband/sql/migrations/0001_initial.sql",
}


def test_wheel_ships_the_sql_files(tmp_path):
    subprocess.run(
        [UV, "build", "--wheel", "--out-dir", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert names >= SQL
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "settings = civicband.settings" in text
