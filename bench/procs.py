"""The bench's processes: what they spend, from /proc (Linux), and their clean-up when a run is stopped."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from types import FrameType

TICKS = 100  # clock ticks per second in /proc/<pid>/stat (USER_HZ, 100 on Linux)


def children(pid: int) -> list[int]:
    """Every descendant of a process (the decode processes and their fork server, for the web app)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        kids = [child for child, ppid in parents.items() if ppid == parent]
        found += kids
        frontier += kids
    return found


def tree_cpu(pid: int) -> float:
    """CPU seconds of `pid` and every descendant alive, with what their ended children spent."""
    return sum(_cpu(member, ended=True) for member in (pid, *children(pid)))


def own_cpu(pid: int) -> float:
    """CPU seconds of `pid` alone: its threads, not its children (the web process without its decode pool)."""
    return _cpu(pid, ended=False)


def _cpu(pid: int, ended: bool) -> float:
    """utime and stime of `pid`, and with `ended` cutime and cstime (its ended children's); 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in fields[11 : 15 if ended else 13]) / TICKS


def exit_on_sigterm() -> None:
    """Make SIGTERM (a plain `kill`) exit through `finally` and atexit, as Ctrl-C does: without it a stopped run
    leaves its web app, workers and Redis running, and they take the cores from the next measurement."""
    signal.signal(signal.SIGTERM, _exit)


def _exit(signum: int, frame: FrameType | None) -> None:
    sys.exit(128 + signum)
