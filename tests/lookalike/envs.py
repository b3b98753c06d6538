"""Build one uv-managed virtualenv per Datasette version under <repo>/.cache/."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache"
VERSIONS = ("0.65.5", "1.0a28")
# Everything but datasette itself is a floor/ceiling, checked by the harness tests.
EXTRA = ("uvicorn>=0.30,<1",)


def uv_command() -> list[str]:
    """Return how to run uv: on PATH, beside this Python, or as a module."""
    found = shutil.which("uv") or shutil.which("uv", path=str(Path(sys.executable).parent))
    return [found] if found else [sys.executable, "-m", "uv"]


def env_dir(version: str) -> Path:
    """Return the environment directory for a Datasette version."""
    return CACHE / f"datasette-{version}"


def python_of(env: Path) -> Path:
    """Return an environment's python executable."""
    return env / "bin" / "python"


def ensure_env(version: str) -> Path:
    """Create (once, under a file lock) the env for `version`; return its python executable."""
    env = env_dir(version)
    spec = " ".join((f"datasette=={version}", *EXTRA))
    marker = env / ".lookalike-ready"
    if marker.exists() and marker.read_text() == spec:
        return python_of(env)
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"datasette-{version}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists() and marker.read_text() == spec:
            return python_of(env)
        shutil.rmtree(env, ignore_errors=True)
        uv = uv_command()
        environ = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
        run = {"check": True, "env": environ, "capture_output": True, "text": True}
        try:
            try:
                venv = [*uv, "venv", "-q", "--no-python-downloads", "--python", "3.11"]
                subprocess.run([*venv, str(env)], **run)
            except subprocess.CalledProcessError:
                subprocess.run([*uv, "venv", "-q", "--python", sys.executable, str(env)], **run)
            python = str(python_of(env))
            subprocess.run([*uv, "pip", "install", "-q", "--python", python, *spec.split()], **run)
            check = "import datasette.app, uvicorn, datasette.version as v; print(v.__version__)"
            out = subprocess.run([python, "-c", check], **run).stdout.strip()
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(f"building {env} failed: {exc.stderr or exc.stdout}") from exc
        if out != version:
            raise RuntimeError(f"{env} has datasette {out!r}, wanted {version}")
        marker.write_text(spec)
    return python_of(env)


if __name__ == "__main__":
    for v in sys.argv[1:] or VERSIONS:
        print(ensure_env(v))
