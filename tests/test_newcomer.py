"""A newcomer's two commands (README, "Start"): they need Python, make and what pip installs, nothing else.
.ci/newcomer runs them for real on a fresh clone (several minutes: CI runs it); here, quickly, what it
relies on, and the script itself on a stand-in project whose `make run` and `make test` take a second."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NEWCOMER = ROOT / ".ci" / "newcomer"
DOWNLOADERS = re.compile(r"\b(npm|npx|node|curl|wget)\b")


def test_the_makefile_installs_runs_and_tests_with_pip_alone() -> None:
    # Every command `make run` and `make test` would run on a fresh clone (-B: as if nothing were built).
    dry = subprocess.run(
        ["make", "-n", "-B", "install", "run", "test", "VENV=/nonexistent/venv"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "-m venv /nonexistent/venv" in dry.stdout and "pip install" in dry.stdout
    assert not DOWNLOADERS.search(dry.stdout), dry.stdout


def test_ci_installs_no_npm_requires_the_browser_and_runs_the_newcomer() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert not re.search(r"\bnpm\b", ci)
    commands = [line.strip() for line in ci.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    passes = [n for n, line in enumerate(commands) if line.endswith("make test")]
    assert len(passes) == 2 and commands.index("export REQUIRE_BROWSER=1") < passes[0]  # for both passes
    assert "bash .ci/newcomer" in commands


def test_the_readme_lists_the_prerequisites() -> None:
    readme = (ROOT / "README.md").read_text()
    start = readme[readme.index("## Start") : readme.index("## Use the API")]
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires == ">=3.11" and "Python ≥ 3.11" in start and " make" in start
    assert "`apt-get install chromium`" in start and "`REQUIRE_BROWSER=1 make test`" in start
    assert not re.search(r"\bnpm\b(?! )", start.replace("no npm", ""))


# A stand-in project: `make run` serves /health/ready (ready after a second) until Ctrl-C; `make test`
# prints what it was given and a pytest-like summary.
SERVER = """
import json, os, signal, subprocess, sys, time
from http.server import BaseHTTPRequestHandler, HTTPServer

started = time.monotonic()

class Ready(BaseHTTPRequestHandler):
    def do_GET(self):
        ready = time.monotonic() - started > 1
        body = json.dumps({"status": "ready" if ready else "not ready"}, separators=(",", ":")).encode()
        self.send_response(200 if ready else 503)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
if os.path.exists("leave-behind"):  # a child out of reach of Ctrl-C
    subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
print("weights:", os.environ.get("MODEL_WEIGHTS"), flush=True)
HTTPServer(("127.0.0.1", int(os.environ.get("PORT", "8000"))), Ready).serve_forever()
"""
MAKEFILE = """
run:
\t{python} server.py
test:
\t@echo "HOME=$$HOME DATABASE_URL=$${{DATABASE_URL-unset}} REQUIRE_BROWSER=$${{REQUIRE_BROWSER-unset}}"
\t@test ! -e fail
\t@echo "============ 3 passed, 1 skipped in 0.01s ============"
"""


def stand_in(path: Path, *flags: str) -> Path:
    path.mkdir()
    (path / "server.py").write_text(SERVER)
    (path / "Makefile").write_text(MAKEFILE.format(python=sys.executable))
    for flag in flags:
        (path / flag).write_text("")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-C", str(path)]
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "stand-in"], check=True)
    return path


def running_in(directory: Path) -> list[int]:
    """Processes whose working directory is in `directory`."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if Path(os.readlink(proc / "cwd")).is_relative_to(directory):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def newcomer(repository: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = os.environ | {
        "DATABASE_URL": "postgres://ci@localhost/ci",
        "REQUIRE_BROWSER": "1",
        "TMPDIR": str(tmp_path),
    }
    result = subprocess.run(
        ["bash", str(NEWCOMER), str(repository)], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    deadline = time.monotonic() + 10  # a process the script killed may take a moment to go
    while (left := running_in(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left running by .ci/newcomer: {left}"
    return result


def test_newcomer_runs_the_readme_commands_in_a_fresh_clone(tmp_path: Path) -> None:
    result = newcomer(stand_in(tmp_path / "project"), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "============ 3 passed, 1 skipped in 0.01s ============"  # pytest's line stays last
    assert lines[-2].startswith("== newcomer: PASS: make run ready after ")
    assert any("make run: ready after" in line and "stopped cleanly on Ctrl-C" in line for line in lines)
    given = next(line for line in lines if line.startswith("HOME="))
    home = given.split()[0].removeprefix("HOME=")
    assert home.startswith(str(tmp_path / "newcomer.")) and home.endswith("/home")
    assert "DATABASE_URL=unset REQUIRE_BROWSER=unset" in given  # none of CI's variables
    assert not list(tmp_path.glob("newcomer.*")), "the clone is left behind"


def test_newcomer_fails_when_make_test_fails(tmp_path: Path) -> None:
    result = newcomer(stand_in(tmp_path / "project", "fail"), tmp_path)
    assert result.returncode == 1
    assert "== newcomer: FAIL: make test exited with 2" in result.stdout
    assert "PASS" not in result.stdout


def test_newcomer_fails_when_ctrl_c_leaves_a_process_running(tmp_path: Path) -> None:
    result = newcomer(stand_in(tmp_path / "project", "leave-behind"), tmp_path)
    assert result.returncode == 1
    assert "== newcomer: FAIL: make run left 1 processes running after Ctrl-C" in result.stdout
    assert "import time; time.sleep(120)" in result.stdout  # named, and stopped
    assert "make test" not in result.stdout


@pytest.mark.parametrize("name", ["newcomer", "run"])
def test_the_ci_scripts_are_valid_bash(name: str) -> None:
    subprocess.run(["bash", "-n", str(ROOT / ".ci" / name)], check=True)
