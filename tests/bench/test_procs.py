"""A bench run stopped with a plain `kill` cleans up what it started, as Ctrl-C does."""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import alive

ROOT = Path(__file__).resolve().parents[2]

# As a bench entry point does: a child process it stops in `finally`, then a long measurement.
SCRIPT = """
import subprocess, sys, time
sys.path.insert(0, sys.argv[1])
from bench.procs import exit_on_sigterm
exit_on_sigterm()
child = subprocess.Popen(["sleep", "120"])
try:
    print(child.pid, flush=True)
    time.sleep(120)
finally:
    child.terminate()
    child.wait()
"""


def test_sigterm_runs_the_clean_up() -> None:
    bench = subprocess.Popen([sys.executable, "-c", SCRIPT, str(ROOT)], stdout=subprocess.PIPE, text=True)
    assert bench.stdout is not None
    child = int(bench.stdout.readline())
    try:
        assert alive(child)
        bench.send_signal(signal.SIGTERM)
        assert bench.wait(timeout=30) == 128 + signal.SIGTERM
        deadline = time.monotonic() + 10
        while alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(child), "the bench's child outlived it"
    finally:
        bench.kill()
        if alive(child):
            os.kill(child, signal.SIGKILL)


def calls(function: ast.FunctionDef, name: str) -> bool:
    return any(
        isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == name
        for node in ast.walk(function)
    )


def test_every_entry_point_cleans_up_on_sigterm() -> None:
    sources = {path.name: path.read_text() for path in (ROOT / "bench").glob("*.py")}
    entry_points = {name: source for name, source in sources.items() if '__name__ == "__main__"' in source}
    assert len(entry_points) >= 8
    for name, source in entry_points.items():
        tree = ast.parse(source)
        main = next(node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "main")
        assert calls(main, "exit_on_sigterm"), f"{name}: main() does not call exit_on_sigterm()"
