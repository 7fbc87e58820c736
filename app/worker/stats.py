"""A worker's running figures: batches, images, a smoothed rate and the histograms its heartbeat carries."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import replace

from app.jobs.protocol import BATCH_SIZE_BUCKETS, INFERENCE_SECONDS_BUCKETS, Heartbeat

RATE_SMOOTHING = 0.3


def _bump(counts: Sequence[int], buckets: Sequence[float], value: float) -> list[int]:
    """Per-bucket (non-cumulative) counts with `value` added; the last slot is +Inf."""
    counts = list(counts) or [0] * (len(buckets) + 1)
    counts[bisect_left(buckets, value)] += 1
    return counts


def observe_batch(heartbeat: Heartbeat, size: int, seconds: float) -> Heartbeat:
    """The heartbeat after one more batch of `size` images that took `seconds`."""
    rate = size / seconds if seconds > 0 else 0.0
    old = heartbeat.images_per_second
    smoothed = rate if not old else old * (1 - RATE_SMOOTHING) + rate * RATE_SMOOTHING
    return replace(
        heartbeat,
        batches=heartbeat.batches + 1,
        images=heartbeat.images + size,
        last_batch_size=size,
        last_batch_ms=round(seconds * 1000, 1),
        images_per_second=round(smoothed, 2),
        batch_size_counts=_bump(heartbeat.batch_size_counts, BATCH_SIZE_BUCKETS, size),
        inference_counts=_bump(heartbeat.inference_counts, INFERENCE_SECONDS_BUCKETS, seconds),
        inference_seconds_total=heartbeat.inference_seconds_total + seconds,
    )
