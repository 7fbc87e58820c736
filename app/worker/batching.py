"""`MAX_BATCH=0`: the worker picks its largest batch by timing the loaded model at start (for GPUs, whose
best batch depends on the card; on a CPU a fixed MAX_BATCH is as good, and starts faster)."""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from app.settings import Settings
from app.worker.classifier import IMAGE_SIZE, ClassifierLike

log = logging.getLogger(__name__)

BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# A batch twice as large must give at least this much more throughput to be worth its longer wait.
MIN_SPEEDUP = 1.1
# Timed runs per batch size (the median counts), after one untimed run that sets up the new shape.
TIMED_RUNS = 3


@dataclass(frozen=True)
class BatchTiming:
    size: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.size / self.seconds if self.seconds > 0 else float("inf")


def choose_batch_size(
    seconds_for: Callable[[int], float],
    target_seconds: float,
    sizes: Sequence[int] = BATCH_SIZES,
    min_speedup: float = MIN_SPEEDUP,
) -> tuple[int, list[BatchTiming]]:
    """The batch size to use, and the timings it was chosen from: of `sizes` (ascending), timed one after
    another by `seconds_for(size)`, the largest that takes at most `target_seconds` and gives `min_speedup`
    times the throughput of the size before it. Timing stops at the first size that fails either (larger
    ones would be slower still, or gain nothing). The first size is taken whatever it takes."""
    timings: list[BatchTiming] = []
    chosen: BatchTiming | None = None
    for size in sizes:
        timing = BatchTiming(size, seconds_for(size))
        timings.append(timing)
        if chosen is not None and (
            timing.seconds > target_seconds or timing.images_per_second < chosen.images_per_second * min_speedup
        ):
            break
        chosen = timing
    if chosen is None:
        raise ValueError("no batch sizes to choose from")
    return chosen.size, timings


def time_batch(classifier: ClassifierLike, size: int, runs: int = TIMED_RUNS) -> float:
    """Seconds one batch of `size` random images takes: the median of `runs`, after one untimed run."""
    pixels = np.random.default_rng(size).integers(0, 256, (size, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    classifier.predict(pixels)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        classifier.predict(pixels)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def worker_batch_size(classifier: ClassifierLike, settings: Settings) -> int:
    """MAX_BATCH, or with MAX_BATCH=0 the size `choose_batch_size` picks for this classifier (seconds)."""
    if settings.max_batch > 0:
        return settings.max_batch
    size, timings = choose_batch_size(lambda n: time_batch(classifier, n), settings.batch_latency_ms / 1000)
    measured = ", ".join(f"{t.size}: {t.seconds * 1000:.0f} ms ({t.images_per_second:.0f}/s)" for t in timings)
    log.info("MAX_BATCH=0: timed batches %s; chose %d (BATCH_LATENCY_MS=%g)", measured, size, settings.batch_latency_ms)
    return size
