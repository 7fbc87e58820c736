"""bench/web_cost.py: the web side's CPU per prediction, by stage, cross-checked with py-spy."""

from __future__ import annotations

import argparse
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from app.feeder import IDLE_ROUND_S
from app.stages import STAGES
from bench import web_cost
from bench.procs import children, own_cpu, tree_cpu


def test_profile_samples_go_to_the_first_stage_any_frame_names(tmp_path: Path) -> None:
    raw = tmp_path / "profile.txt"
    raw.write_text(
        "run (asyncio);authenticate_request (app/web/sessions.py:70);execute (tortoise/backends/client.py:3) 3\n"
        "submit (app/predictions.py:1);execute (tortoise/backends/client.py:3) 5\n"
        "_decoded (app/sandbox.py:90);decode (app/images.py:280) 2\n"
        "run (asyncio/runners.py:118) 10\n"
        "_decoded (app/sandbox.py:90);store_original (app/files.py:90) 2\n"
    )
    shares = {"auth": 3 / 22, "database": 5 / 22, "decode": 2 / 22, "other": 10 / 22, "storage": 2 / 22}
    assert web_cost.profile_shares(raw) == pytest.approx(shares)


def test_the_stage_histogram_is_read_from_the_metrics_text() -> None:
    text = (
        'app_web_stage_cpu_seconds_count{stage="decode"} 4.0\n'
        'app_web_stage_cpu_seconds_sum{stage="decode"} 0.02\n'
        'app_web_stage_cpu_seconds_bucket{stage="decode",le="0.001"} 1.0\n'
    )
    assert web_cost.stage_sums(text) == {"decode": (4.0, 0.02)}


def at_least(measure: Callable[[], float], enough: float) -> float:
    """`measure()` once it is `enough`, or after a minute: a busy machine takes longer than any fixed sleep for a
    process to start and burn its CPU (after 0.5 s, a burn of 0.3 s had not been counted yet)."""
    deadline = time.monotonic() + 60
    while (measured := measure()) < enough and time.monotonic() < deadline:
        time.sleep(0.05)
    return measured


def test_a_process_tree_counts_its_children() -> None:
    # The grandchild stays once it has burned: counted while alive, not as its parent's ended child.
    burn = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\ntime.sleep(60)\n"
    parent = subprocess.Popen(
        [sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, '-c', {burn!r}])"],
        start_new_session=True,
    )
    try:
        spent = at_least(lambda: tree_cpu(parent.pid), 0.2)
    finally:
        os.killpg(parent.pid, signal.SIGKILL)
        parent.wait()
    assert spent >= 0.2  # the grandchild's burn, seen through its parent


def test_a_process_alone_does_not_count_its_children() -> None:
    burn = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\n"
    run_child = f"import subprocess, sys, time; subprocess.run([sys.executable, '-c', {burn!r}]); time.sleep(60)"
    parent = subprocess.Popen([sys.executable, "-c", run_child])
    try:
        # The child burned and ended: its CPU is the parent's children's now.
        tree = at_least(lambda: tree_cpu(parent.pid) if not children(parent.pid) else 0.0, 0.2)
        own = own_cpu(parent.pid)
    finally:
        parent.kill()
        parent.wait()
    assert tree >= 0.2 and own < 0.15  # the parent itself only started Python


def test_a_process_alone_counts_its_own_threads() -> None:
    burn = "def burn():\n    end = time.process_time() + 0.4\n    while time.process_time() < end: pass\n"
    in_a_thread = "threading.Thread(target=burn).start()\ntime.sleep(60)\n"
    burner = subprocess.Popen([sys.executable, "-c", f"import threading, time\n{burn}{in_a_thread}"])
    try:
        own = at_least(lambda: own_cpu(burner.pid), 0.3)
    finally:
        burner.kill()
        burner.wait()
    assert own >= 0.3


@pytest.mark.timeout(300)
def test_a_small_run_measures_every_stage(tmp_path: Path) -> None:
    options = argparse.Namespace(predictions=50, large=0, collection=10, concurrency=2, baseline="", rounds=2)
    cost, collected = web_cost.run(options, tmp_path)
    assert cost.images == 40 and cost.ms_per_image > 0  # 10 of the 50 measure the split one at a time
    assert len(cost.rounds_ms) == 2 and min(cost.rounds_ms) <= cost.ms_per_image <= max(cost.rounds_ms)
    # The web process's own part: some of it, not all (its decode processes decode). The OS counts CPU in
    # 10 ms ticks, and a round of 20 small uploads leaves its decode processes only 40 to 50 ms (measured),
    # so the share is judged on both rounds together.
    assert len(cost.web_rounds_ms) == 2 and min(cost.web_rounds_ms) >= 0
    assert 0 < sum(cost.web_rounds_ms) < sum(cost.rounds_ms)
    # One EVALSHA per upload (its enqueue), and those of the web process's feeder: Redis counts the whole
    # server's commands, and each idle round of the feeder, every IDLE_ROUND_S, takes and releases its lock,
    # which redis-py releases by a script (MONITOR showed EVALSHA on lock:feed between the enqueues; a round
    # of uploads that took over 2 s counted 21 for 20). At most one more than the rounds' time holds.
    feeding = math.ceil(cost.counted_s / IDLE_ROUND_S) + len(cost.rounds_ms)
    assert 40 <= cost.calls["evalsha"] <= 40 + feeding
    assert set(cost.stages_ms) == set(STAGES)
    assert cost.stages_ms["decode"] > 0 and cost.stages_ms["database"] > 0
    # A request that decodes nothing, each round: cheaper than an upload, which decodes and stores a photo.
    assert {name: len(rounds) for name, rounds in cost.floor_ms.items()} == dict.fromkeys(web_cost.FLOOR, 2)
    assert 0 < max(max(rounds) for rounds in cost.floor_ms.values()) < cost.ms_per_image
    # The collection: 5 images a round, read from one archive each, with no stage timers (no upload request).
    assert collected.label == f"this code, {web_cost.COLLECTION}" and collected.images == 10
    assert len(collected.rounds_ms) == 2 and collected.ms_per_image > 0 and not collected.stages_ms
    report = web_cost.report([cost, collected])
    assert "| this code, 640x480 |" in report and "| this code |" in report
    assert f"| this code, {web_cost.COLLECTION} | **{collected.ms_per_image:.1f}**" in report
    assert f"| {cost.web_ms_per_image:.1f} |" in report.split("of which the web process")[1]


def test_the_baselines_checkout_is_removed_after(tmp_path: Path) -> None:
    def listed() -> str:
        return subprocess.run(["git", "worktree", "list"], cwd=web_cost.ROOT, capture_output=True, text=True).stdout

    with web_cost.worktree("HEAD", tmp_path) as path:
        assert (path / "app" / "sandbox.py").is_file() and str(path) in listed()
    assert not path.exists() and str(path) not in listed()
