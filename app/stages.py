"""Where an upload's CPU goes on the web side, stage by stage, as the Prometheus histogram
`app_web_stage_cpu_seconds{stage}`: one observation per stage per upload request.

The web middleware (app/web/stages.py) opens a `Costs` for each upload request; the code on its way marks
its stages with `stage(name)`, and the decode pool reports what its process spent (`add`). A stage counts
CPU time of the whole web process while it runs (`time.process_time`: the event loop and the threads it
hands work to, such as storage and SQLite), so with many requests at once a stage also counts what the
others did meanwhile: the split is exact one request at a time (`make bench` measures it so), and the
total per upload under load comes from the operating system's counters.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from prometheus_client import Histogram

# In the order an upload meets them. "decode", "hash" and "storage" are the decode pool's process; "other" is what
# no stage claimed (routing, the other middleware, validation).
STAGES = ("parsing", "auth", "decode", "hash", "storage", "database", "redis", "waiting", "rendering", "other")
STAGE_CPU = Histogram(
    "app_web_stage_cpu_seconds",
    "CPU seconds an upload request spent in each stage, on the web side (the web process and its decode pool)",
    ["stage"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)


@functools.cache
def _of_stage(name: str) -> Histogram:
    """The stage's histogram, looked up once (`labels` takes a lock and builds a key: 10 per upload)."""
    return STAGE_CPU.labels(name)


class Costs:
    """The CPU seconds one upload request spent, by stage. `stage` blocks claim what they spend; `close`
    gives what the process spent since the previous mark, outside any block, to a stage (parsing up to
    the handler, rendering after it)."""

    def __init__(self) -> None:
        self.started = self._mark = time.process_time()
        self.spent = dict.fromkeys(STAGES, 0.0)
        self.outside = 0.0  # spent in other processes (the decode pool) on this request's behalf
        self._staged = 0.0  # spent in this process in `stage` blocks since the last mark
        self.recorded = True

    def in_stage(self, name: str, seconds: float) -> None:
        self.spent[name] += seconds
        self._staged += seconds

    def elsewhere(self, name: str, seconds: float) -> None:
        self.spent[name] += seconds
        self.outside += seconds

    def close(self, name: str) -> None:
        now = time.process_time()
        self.spent[name] += max(0.0, now - self._mark - self._staged)
        self._mark, self._staged = now, 0.0

    def finish(self) -> None:
        """Record the request's stages; what no stage claimed is "other"."""
        self.close("other")
        if not self.recorded:
            return
        for name, seconds in self.spent.items():
            _of_stage(name).observe(seconds)


_current: ContextVar[Costs | None] = ContextVar("costs", default=None)


def begin() -> Costs:
    costs = Costs()
    _current.set(costs)
    return costs


def close(name: str) -> None:
    """Mark the end of an unmarked stretch of the current upload request (see Costs.close)."""
    costs = _current.get()
    if costs is not None:
        costs.close(name)


def forget() -> None:
    """The current request turned out not to be an upload of one image: record nothing."""
    costs = _current.get()
    if costs is not None:
        costs.recorded = False


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Count the CPU this process spends inside the block to `name`, when an upload is being measured."""
    costs = _current.get()
    if costs is None:
        yield
        return
    started = time.process_time()
    try:
        yield
    finally:
        costs.in_stage(name, time.process_time() - started)


def elsewhere(name: str, seconds: float) -> None:
    """CPU another process (a decode process) spent on behalf of the current upload."""
    costs = _current.get()
    if costs is not None:
        costs.elsewhere(name, seconds)
