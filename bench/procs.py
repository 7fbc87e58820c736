"""What processes spend, from /proc (Linux)."""

from __future__ import annotations

from pathlib import Path

TICKS = 100  # clock ticks per second in /proc/<pid>/stat (USER_HZ, 100 on Linux)


def tree_cpu(pid: int) -> float:
    """CPU seconds of `pid` and every descendant alive, with what their ended children spent."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        child = int(stat.parent.name)
        parents[child] = int(fields[1])
        times[child] = sum(int(x) for x in fields[11:15]) / TICKS
    family, grew = {pid}, True
    while grew:
        more = {p for p, parent in parents.items() if parent in family} - family
        family |= more
        grew = bool(more)
    return sum(times.get(p, 0.0) for p in family)
