"""INFERENCE_BACKEND=auto with fake backends: the rule for agreeing with TensorFlow, the choice of the fastest
backend that agrees, TensorFlow when none does (or none loads), and the cache of the decision. The real
backends: test_openvino.py, test_auto_chooses_from_the_real_backends."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from app.settings import Settings
from app.worker import choice, choice_cache
from app.worker.agreement import MIN_TOP1_AGREEMENT, TOP1_NEAR_TIE, Top5, compare, disagreement, probe_images
from app.worker.backends import load_chosen
from app.worker.choice import PROBE_IMAGES, Candidate, Choice, probe
from app.worker.classifier import MODEL_NAME, TOP_K, Classifier, ModelInfo, ModelLoadError, StandInClassifier

TF, OV, OV32 = Candidate("tensorflow"), Candidate("openvino"), Candidate("openvino", "f32")
IMAGES = probe_images(PROBE_IMAGES)


class Clock:
    """The probe's clock in these tests: only the fakes' inferences move it, so their speeds are exact (real
    sleeps on a busy machine were not)."""

    now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def time(self) -> float:
        return time.time()


CLOCK = Clock()


@pytest.fixture(autouse=True)
def _fake_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(choice, "time", CLOCK)
    monkeypatch.setattr(choice, "probe_images", lambda count: IMAGES[:count])  # made once: it takes a second


class Fake(Classifier):
    """The stand-in's answers, taking `seconds` per batch of the probe's clock; `shift`: other classes (another
    model); `fail`: every inference raises."""

    def __init__(self, engine: str, seconds: float, shift: int = 0, fail: bool = False) -> None:
        backend = "tensorflow" if engine.startswith("keras") else "openvino"
        self.info = ModelInfo(MODEL_NAME, engine, "random", backend=backend)
        self.seconds, self.shift, self.fail = seconds, shift, fail
        self.inner = StandInClassifier()

    def _top5(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.fail:
            raise RuntimeError("the device went away")
        CLOCK.now += self.seconds
        probs, indices = self.inner._top5(pixels)
        return probs, (indices + self.shift) % 1000


class Loads:
    """A loader of fakes, recording what it was asked for; a missing candidate fails to load."""

    def __init__(self, **fakes: Fake) -> None:
        self.fakes = fakes
        self.asked: list[Candidate] = []

    def __call__(self, candidate: Candidate) -> Classifier:
        self.asked.append(candidate)
        name = f"{candidate.backend}{candidate.precision}"
        if name not in self.fakes:
            raise ModelLoadError(f"{name} cannot load here")
        return self.fakes[name]


def fakes(tf: float = 0.02, ov: float = 0.004, ov32: float = 0.01, **more: Fake) -> Loads:
    """TensorFlow, OpenVINO at its default precision (bf16 here) and at f32, agreeing, at these seconds per batch."""
    found = {
        "tensorflow": Fake("keras-3", tf),
        "openvino": Fake("openvino-1-bf16", ov),
        "openvinof32": Fake("openvino-1-f32", ov32),
    }
    return Loads(**{**found, **more})


def tops(*rows: list[tuple[int, float]]) -> list[Top5]:
    return [[*row, *((900 + k, 0.01) for k in range(TOP_K - len(row)))] for row in rows]


# ---- the rule ------------------------------------------------------------------------------------------


def test_top1_may_differ_only_on_a_near_tie() -> None:
    reference = tops([(1, 0.5), (2, 0.5 - TOP1_NEAR_TIE / 2)], *([[(3, 0.9), (4, 0.05)]] * 19))
    swapped = tops([(2, 0.5), (1, 0.48)], *([[(3, 0.9), (4, 0.05)]] * 19))
    assert disagreement(compare("e", reference, swapped)) == ""  # 95% top-1: the one difference a near tie
    clear = tops([(1, 0.6), (2, 0.6 - TOP1_NEAR_TIE * 2)], *([[(3, 0.9), (4, 0.05)]] * 19))
    assert "top-1 differs where TensorFlow leads by 0.10" in disagreement(compare("e", clear, swapped))


def test_near_ties_alone_do_not_make_agreement() -> None:
    tie = [(1, 0.3), (2, 0.29)]
    reference = tops(*([tie] * 10))
    swapped = tops(*([[(2, 0.3), (1, 0.29)]] * 2), *([tie] * 8))  # 80% top-1, every difference a near tie
    assert MIN_TOP1_AGREEMENT > 0.8
    assert disagreement(compare("e", reference, swapped)).startswith("top-1 agrees on 80% of the images")


def test_top5_must_overlap() -> None:
    reference = tops(*([[(1, 0.5), (2, 0.1), (3, 0.1), (4, 0.1), (5, 0.1)]] * 4))
    other = tops(*([[(1, 0.5), (2, 0.1), (6, 0.1), (7, 0.1), (8, 0.1)]] * 4))  # top-1 same, 2 of 5 classes
    assert disagreement(compare("e", reference, reference)) == ""
    assert disagreement(compare("e", reference, other)) == "top-5 overlap 40.0% (under 90%)"


# ---- the decision --------------------------------------------------------------------------------------


def test_the_fastest_backend_that_agrees_is_chosen() -> None:
    loads = fakes()
    classifier, chosen = probe(loads, [OV, OV32], batch=16)
    assert classifier is loads.fakes["openvino"] and (chosen.backend, chosen.precision) == ("openvino", "")
    assert chosen.engine == "openvino-1-bf16" and chosen.reason == "the fastest backend that agrees with TensorFlow"
    assert loads.asked == [TF, OV, OV32]
    speeds = {t.engine: t.images_per_second for t in chosen.trials}
    assert speeds["openvino-1-bf16"] > speeds["openvino-1-f32"] > speeds["keras-3"] > 0
    assert all(t.agreement is None or t.agreement.top1_agreement == 1.0 for t in chosen.trials)
    assert (chosen.images, chosen.batch, chosen.cacheable) == (PROBE_IMAGES, 16, True)
    assert chosen.summary.startswith("openvino-1-bf16: the fastest backend that agrees with TensorFlow (keras-3 ")
    assert "openvino-1-f32 " in chosen.summary and "top-1 100%, top-5 100.0%: agrees" in chosen.summary


def test_a_faster_backend_that_disagrees_is_not_chosen() -> None:
    loads = fakes(openvino=Fake("openvino-1-bf16", 0.001, shift=7))  # fastest, but another model
    classifier, chosen = probe(loads, [OV, OV32], batch=16)
    assert classifier is loads.fakes["openvinof32"] and chosen.engine == "openvino-1-f32"
    bf16 = next(t for t in chosen.trials if t.engine == "openvino-1-bf16")
    assert bf16.verdict.startswith("top-1 differs") and not bf16.qualifies
    assert "openvino-1-bf16 " in chosen.summary and ": top-1 differs where TensorFlow leads by" in chosen.summary


def test_tensorflow_when_no_other_backend_agrees() -> None:
    loads = fakes(openvino=Fake("openvino-1-bf16", 0.001, shift=7), openvinof32=Fake("openvino-1-f32", 0.001, shift=3))
    classifier, chosen = probe(loads, [OV, OV32], batch=16)
    assert classifier is loads.fakes["tensorflow"] and chosen.backend == "tensorflow" and chosen.engine == "keras-3"
    assert chosen.reason == "no other backend agrees with TensorFlow and is faster"
    assert chosen.cacheable  # a fixed verdict: no reason to probe again at the next start


def test_tensorflow_when_the_others_are_slower_or_barely_faster() -> None:
    _, slower = probe(fakes(tf=0.005, ov=0.02, ov32=0.03), [OV, OV32], batch=16)
    assert slower.backend == "tensorflow"
    _, barely = probe(fakes(tf=0.02, ov=0.019, ov32=0.03), [OV, OV32], batch=16)  # within the timing noise
    assert barely.backend == "tensorflow" and barely.reason == "no backend that agrees with TensorFlow is 10% faster"


def test_a_backend_that_fails_to_load_or_run_leaves_tensorflow_and_is_tried_again_next_start() -> None:
    loads = fakes()
    del loads.fakes["openvino"], loads.fakes["openvinof32"]
    classifier, chosen = probe(loads, [OV, OV32], batch=16)
    assert classifier is loads.fakes["tensorflow"]
    assert [t.error for t in chosen.trials[1:]] == [
        "failed: openvino cannot load here",
        "failed: openvinof32 cannot load here",
    ]
    assert "openvino: failed: openvino cannot load here" in chosen.summary and not chosen.cacheable
    broken = fakes(openvino=Fake("openvino-1-bf16", 0.001, fail=True), openvinof32=Fake("openvino-1-f32", 0.03))
    classifier, chosen = probe(broken, [OV, OV32], batch=16)
    assert classifier is broken.fakes["tensorflow"] and not chosen.cacheable
    assert chosen.trials[-1].error == "failed: the device went away"


def test_the_same_engine_twice_is_measured_once() -> None:
    """On a CPU without bf16, OpenVINO's default precision is f32: one engine, not two candidates."""
    loads = fakes(openvino=Fake("openvino-1-f32", 0.004))
    _, chosen = probe(loads, [OV, OV32], batch=16)
    assert [t.engine for t in chosen.trials] == ["keras-3", "openvino-1-f32"]


def test_tensorflow_failing_fails_the_start() -> None:
    with pytest.raises(ModelLoadError, match="tensorflow cannot load here"):
        probe(Loads(), [OV], batch=16)


# ---- the cache and the worker's start ------------------------------------------------------------------


@pytest.fixture
def auto(settings: Settings, tmp_path: Path) -> Settings:
    return replace(settings, inference_backend="auto", model_cache_dir=tmp_path, openvino_precision="")


def test_a_restart_loads_only_the_cached_choice(auto: Settings, caplog: pytest.LogCaptureFixture) -> None:
    first = fakes()
    classifier, chosen = load_chosen(auto, first)
    assert first.asked == [TF, OV, OV32] and classifier is first.fakes["openvino"] and not chosen.cached
    (cached_file,) = auto.model_cache_dir.glob("backend-choice-*.json")
    stored = json.loads(cached_file.read_text())
    assert stored["key"]["model"] == "resnet50-random" and stored["choice"]["engine"] == "openvino-1-bf16"
    restart = fakes()
    caplog.clear()  # the first load's own line, logged where an earlier test left this logger at INFO
    with caplog.at_level("INFO", logger="app.worker.backends"):
        classifier, again = load_chosen(auto, restart)
    assert restart.asked == [OV] and classifier is restart.fakes["openvino"]  # no TensorFlow, no probe
    assert again.cached and again == replace(chosen, cached=True)
    assert again.summary.endswith(", cached)")
    logged = [r.getMessage() for r in caplog.records if r.name == "app.worker.backends"]
    assert logged == [f"inference backend {again.summary}"]


def test_another_key_probes_again(auto: Settings) -> None:
    load_chosen(auto, fakes())
    other = fakes()
    load_chosen(replace(auto, model_threads=auto.model_threads + 1), other)
    assert other.asked == [TF, OV, OV32]
    assert len(list(auto.model_cache_dir.glob("backend-choice-*.json"))) == 2
    assert choice_cache.cache_key(auto) != choice_cache.cache_key(replace(auto, model_threads=auto.model_threads + 1))


@pytest.mark.parametrize(
    "damage",
    [
        "",
        "{not json",
        "[]",
        '{"key": KEY, "choice": {}}',
        '{"key": KEY, "choice": {"backend": "pytorch", "trials": []}}',
    ],
)
def test_a_damaged_cache_probes_again(auto: Settings, damage: str) -> None:
    load_chosen(auto, fakes())
    path = choice_cache.cache_path(auto)
    path.write_text(damage.replace("KEY", json.dumps(choice_cache.cache_key(auto))))
    again = fakes()
    _, chosen = load_chosen(auto, again)
    assert again.asked == [TF, OV, OV32] and not chosen.cached
    assert json.loads(path.read_text())["choice"]["engine"] == "openvino-1-bf16"  # written anew


def _retyped(field: str, value: object, trial: int | None = None, agreement: bool = False) -> Callable[[str], str]:
    """The stored file's text with one field of the choice (or of one of its trials, or of that trial's
    agreement) set to `value`: still valid JSON."""

    def edit(text: str) -> str:
        stored = json.loads(text)
        target = stored["choice"] if trial is None else stored["choice"]["trials"][trial]
        (target["agreement"] if agreement else target)[field] = value
        return json.dumps(stored)

    return edit


@pytest.mark.parametrize(
    "edit",
    [
        _retyped("measured_at", "yesterday"),
        _retyped("measured_at", 1e300),
        _retyped("images_per_second", "fast", trial=0),
        _retyped("top1_agreement", "x", trial=1, agreement=True),
        _retyped("trials", {"not": "a list"}),
        lambda text: "[" * 200_000 + "]" * 200_000,
        lambda text: text + " " * choice_cache.MAX_CACHE_BYTES,
    ],
    ids=["measured_at-str", "measured_at-huge", "speed-str", "agreement-str", "trials-dict", "nested", "too-large"],
)
def test_a_cache_of_the_wrong_types_or_too_deep_probes_again(auto: Settings, edit: Callable[[str], str]) -> None:
    """Found in review: valid JSON of the wrong types passed the reading, then failed the worker's start in
    Choice.summary (TypeError, ValueError); deep nesting raised RecursionError out of the reading. The file
    stayed, so every restart died: a crash loop instead of a probe."""
    load_chosen(auto, fakes())
    path = choice_cache.cache_path(auto)
    path.write_text(edit(path.read_text()))
    again = fakes()
    _, chosen = load_chosen(auto, again)
    assert again.asked == [TF, OV, OV32] and not chosen.cached
    assert json.loads(path.read_text())["choice"]["engine"] == "openvino-1-bf16"  # written anew


def test_a_cached_choice_that_no_longer_loads_probes_again(auto: Settings) -> None:
    load_chosen(auto, fakes())
    gone = fakes()
    del gone.fakes["openvino"]
    classifier, chosen = load_chosen(auto, gone)
    assert gone.asked == [OV, TF, OV, OV32] and classifier is gone.fakes["openvinof32"]
    assert "openvino: failed: openvino cannot load here" in chosen.summary and not chosen.cacheable


def test_a_failed_probe_is_not_cached(auto: Settings) -> None:
    broken = fakes()
    del broken.fakes["openvino"]
    load_chosen(auto, broken)
    assert not list(auto.model_cache_dir.glob("backend-choice-*.json"))


def test_a_cache_directory_it_cannot_write_costs_a_probe_not_the_start(
    auto: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "a-file").write_text("")
    unwritable = replace(auto, model_cache_dir=tmp_path / "a-file" / "models")  # the tests run as root: no chmod
    for _ in range(2):
        loads = fakes()
        classifier, chosen = load_chosen(unwritable, loads)
        assert loads.asked == [TF, OV, OV32] and classifier is loads.fakes["openvino"] and not chosen.cached
    assert "could not cache the backend choice in" in caplog.text and "probing without the lock" in caplog.text


def test_openvino_not_installed(auto: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(choice_cache, "installed", lambda package: package != "openvino")
    loads = fakes()
    classifier, chosen = load_chosen(auto, loads)
    assert loads.asked == [TF] and classifier is loads.fakes["tensorflow"]
    assert "openvino: not installed" in chosen.summary and chosen.cacheable  # the key has OpenVINO's version
    assert choice_cache.cache_path(auto).exists()


def test_a_backend_that_is_set_is_not_probed(auto: Settings) -> None:
    loads = fakes()
    classifier, chosen = load_chosen(replace(auto, inference_backend="openvino", openvino_precision="f32"), loads)
    assert loads.asked == [OV32] and classifier is loads.fakes["openvinof32"]
    assert (
        chosen == Choice("openvino", "f32", "openvino-1-f32")
        and chosen.summary == "openvino-1-f32: set by INFERENCE_BACKEND"
    )
    assert not list(auto.model_cache_dir.iterdir())
