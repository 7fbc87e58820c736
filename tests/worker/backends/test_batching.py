"""MAX_BATCH=0: the batch size chosen from timings (fake ones here: a GPU's and a CPU's shapes), and what
the worker does with it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from app.settings import Settings, SettingsError, load_settings
from app.worker import batching
from app.worker.batching import BATCH_SIZES, choose_batch_size, time_batch, worker_batch_size
from app.worker.classifier import StandInClassifier
from app.worker.loop import Worker


def timed(seconds: Callable[[int], float]) -> tuple[Callable[[int], float], list[int]]:
    """`seconds`, recording the sizes it is asked to time."""
    asked: list[int] = []

    def time_it(size: int) -> float:
        asked.append(size)
        return seconds(size)

    return time_it, asked


def gpu(size: int) -> float:
    """A GPU's shape: a fixed cost per call, then 0.2 ms an image (throughput still rising at 256)."""
    return 0.02 + 0.0002 * size


def test_a_gpu_takes_the_largest_batch_within_the_target() -> None:
    time_it, asked = timed(gpu)
    size, timings = choose_batch_size(time_it, target_seconds=0.06)
    assert size == 128  # 46 ms; 256 would take 71 ms
    assert asked == list(BATCH_SIZES)  # 256 was timed, and refused
    assert [t.size for t in timings] == asked and timings[-1].seconds == pytest.approx(0.0712)


def test_a_generous_target_takes_256() -> None:
    assert choose_batch_size(gpu, target_seconds=1.0)[0] == 256


def test_timing_stops_at_the_first_batch_over_the_target() -> None:
    time_it, asked = timed(gpu)
    assert choose_batch_size(time_it, target_seconds=0.025)[0] == 16  # 23 ms; 32 takes 26 ms
    assert asked == [1, 2, 4, 8, 16, 32]


def test_no_gain_in_throughput_stops_the_growth() -> None:
    """A CPU's shape: throughput rises to batch 8, then flattens; a larger batch would only wait longer."""
    rates = {1: 40.0, 2: 46.0, 4: 51.0, 8: 57.0, 16: 59.0, 32: 60.0}
    time_it, asked = timed(lambda size: size / rates[size])
    size, _ = choose_batch_size(time_it, target_seconds=10.0)
    assert size == 8  # 16 gains under 10%
    assert asked == [1, 2, 4, 8, 16]


def test_the_smallest_batch_is_taken_even_if_too_slow() -> None:
    time_it, asked = timed(lambda size: 2.0 * size)
    assert choose_batch_size(time_it, target_seconds=0.5)[0] == 1
    assert asked == [1, 2]


def test_no_sizes_is_an_error() -> None:
    with pytest.raises(ValueError, match="no batch sizes"):
        choose_batch_size(gpu, 1.0, sizes=())


class Recording:
    """A classifier that records the batches it is given."""

    def __init__(self) -> None:
        self.inner = StandInClassifier()
        self.shapes: list[tuple[int, ...]] = []

    @property
    def info(self) -> Any:
        return self.inner.info

    def predict(self, pixels: np.ndarray) -> list[list[tuple[int, float]]]:
        self.shapes.append(pixels.shape)
        return self.inner.predict(pixels)


def test_time_batch_warms_up_then_times_the_runs() -> None:
    recording = Recording()
    seconds = time_batch(recording, 4, runs=3)
    assert recording.shapes == [(4, 224, 224, 3)] * 4  # one untimed run, three timed
    assert 0 < seconds < 5


def test_a_set_max_batch_is_used_without_timing(monkeypatch: pytest.MonkeyPatch) -> None:
    def never(*_: Any) -> float:
        raise AssertionError("timed although MAX_BATCH was set")

    monkeypatch.setattr(batching, "time_batch", never)
    assert worker_batch_size(StandInClassifier(), Settings(max_batch=24)) == 24


def test_max_batch_zero_times_the_classifier(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    asked: list[int] = []

    def fake_time(classifier: Any, size: int) -> float:
        asked.append(size)
        return gpu(size)

    monkeypatch.setattr(batching, "time_batch", fake_time)
    caplog.set_level("INFO", logger="app.worker.batching")
    assert worker_batch_size(StandInClassifier(), Settings(max_batch=0, batch_latency_ms=40)) == 64  # 33 ms
    assert asked == [1, 2, 4, 8, 16, 32, 64, 128]
    assert "MAX_BATCH=0: timed batches 1: 20 ms (50/s), 2: 20 ms (98/s)" in caplog.text and "chose 64" in caplog.text


def test_max_batch_zero_with_a_real_classifier() -> None:
    """The stand-in's cost grows with the batch: whatever is chosen is one of the sizes, and timing it stopped."""
    size = worker_batch_size(StandInClassifier(), Settings(max_batch=0, batch_latency_ms=5))
    assert size in BATCH_SIZES


def test_the_worker_refuses_an_unresolved_max_batch() -> None:
    with pytest.raises(ValueError, match="MAX_BATCH=0 is resolved before the loop starts"):
        Worker(redis=None, classifier=StandInClassifier(), settings=Settings(max_batch=0))  # type: ignore[arg-type]


def test_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_BATCH", "0")
    monkeypatch.setenv("BATCH_LATENCY_MS", "250")
    settings = load_settings()
    assert (settings.max_batch, settings.batch_latency_ms) == (0, 250.0)
    assert dataclasses.replace(settings, max_batch=64).max_batch == 64  # how the worker keeps its choice
    for name, value in (("MAX_BATCH", "-1"), ("BATCH_LATENCY_MS", "0")):
        monkeypatch.setenv(name, value)
        with pytest.raises(SettingsError, match=f"{name} is not valid .*than"):
            load_settings()
        monkeypatch.setenv(name, "1")
