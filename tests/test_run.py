"""`make run` (python -m app.run) on the embedded default, when what it needs is not to be had: one line
saying what to do and a failing exit status, not "serving ..." and status 0."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from app.run import Restarting, supervise

ROOT = Path(__file__).resolve().parent.parent


def make_run(cwd: Path, port: int) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env |= {"PYTHONPATH": str(ROOT), "PORT": str(port), "INFERENCE_BACKEND": "stand-in", "MODEL_WEIGHTS": "random"}
    command = [sys.executable, "-m", "app.run"]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=90, check=False)


def free_port() -> int:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        return int(free.getsockname()[1])


def test_a_port_taken_is_one_line_and_a_failing_status(tmp_path: Path) -> None:
    """Found in review: with the port taken, make run printed "serving http://localhost:PORT", uvicorn failed
    with "address already in use", and the command exited 0."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = make_run(tmp_path, port)
    assert result.returncode == 1 and "serving http://" not in result.stdout, result.stdout + result.stderr
    assert result.stderr == f"make run: port {port} is in use: set PORT= to a free one, or stop what listens on it\n"
    assert not (tmp_path / "data").exists()  # checked before starting anything


def test_a_web_app_that_stops_on_its_own_gives_its_status(tmp_path: Path) -> None:
    """Found in review: make run exited 0 whatever the web app's status."""
    worker = Restarting("worker", [sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        served = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
        assert supervise(worker, served) == 3
    finally:
        worker.process.kill()
        worker.process.wait()
