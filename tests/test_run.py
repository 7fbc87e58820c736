"""`make run` (python -m app.run) on the embedded default, when what it needs is not to be had: one line
saying what to do and a failing exit status, not "serving ..." and status 0, nor a traceback."""

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


def test_a_data_directory_it_cannot_make_is_one_clear_line(tmp_path: Path) -> None:
    """Found in review: a file named `data` (or `data/metrics`) gave a FileExistsError traceback."""
    (tmp_path / "data").write_text("")  # the tests run as root: a file where the directory goes, not chmod
    result = make_run(tmp_path, free_port())
    assert result.returncode == 1
    assert result.stderr == "make run: cannot use data as a directory (File exists): move what is there away\n"


def test_a_metrics_directory_it_cannot_make_is_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "metrics").write_text("")
    result = make_run(tmp_path, free_port())
    assert result.returncode == 1
    assert result.stderr == "make run: cannot use data/metrics as a directory (File exists): move what is there away\n"


def test_a_damaged_embedded_redis_file_is_named_with_the_cause(tmp_path: Path) -> None:
    """Found in review: a data/redis.db cut short gave a redis-py ConnectionError traceback ("Connection refused"
    on a temporary socket) naming neither the file nor the cause."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "redis.db").write_bytes(b"REDIS0009garbage")
    result = make_run(tmp_path, free_port())
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.stderr.startswith("make run: the embedded Redis did not start from data/redis.db (")
    assert "reading RDB file" in result.stderr and "mv data/redis.db data/redis.db.damaged" in result.stderr
    assert (tmp_path / "data" / "redis.db").read_bytes() == b"REDIS0009garbage"  # left as it was
