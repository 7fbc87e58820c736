"""Load the backend INFERENCE_BACKEND names, or with `auto` the one app/worker/choice.py picks (its decision
cached by app/worker/choice_cache.py). TensorFlow and OpenVINO are imported only when chosen, so the web
app and the worker's tests need neither."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from app.settings import BACKENDS, OPENVINO_PRECISIONS, Settings, get_settings
from app.worker import choice_cache
from app.worker.choice import Candidate, Choice, Loader, Trial, probe, timing_batch
from app.worker.classifier import IMAGE_SIZE, WARMUP_SIZES, Classifier, ModelLoadError, StandInClassifier

log = logging.getLogger(__name__)


def load_classifier(
    weights: str,
    threads: int = 0,
    warmup_sizes: Sequence[int] = WARMUP_SIZES,
    *,
    backend: str = "tensorflow",
    precision: str = "",
    cache_dir: Path | str | None = None,
    device: str = "CPU",
    mixed_precision: str = "auto",
) -> Classifier:
    """ResNet50 with `weights` ("imagenet", "random" or a weights file path) on `backend`, warmed up.

    tensorflow: `threads` > 0 sets TensorFlow's intra-op threads to that and inter-op to 1; it only
    works before TensorFlow has executed anything in this process (else a logged warning). It runs on
    its first GPU if it has one; `mixed_precision` ("auto", "on", "off") is MIXED_PRECISION.
    openvino: `threads` > 0 is OpenVINO's INFERENCE_NUM_THREADS; `precision` its
    INFERENCE_PRECISION_HINT ("f32", "bf16", "f16"; "" for its default: bf16 on CPUs that have it);
    the converted model is cached in `cache_dir` (default: the MODEL_CACHE_DIR setting) and compiled
    for `device` (OPENVINO_DEVICE: "CPU", "GPU", "AUTO"...).
    Takes a few seconds; an OpenVINO start that has to convert, about half a minute.
    """
    engines = [name for name in BACKENDS if name != "auto"]  # auto picks one of them: load_chosen
    if backend not in engines:
        raise ModelLoadError(f"INFERENCE_BACKEND={backend!r} is not a backend: use one of {', '.join(engines)}")
    classifier: Classifier
    if backend == "stand-in":  # for tests of everything around the model: no ResNet50 at all
        classifier = StandInClassifier(weights)
    elif backend == "openvino":
        if precision not in OPENVINO_PRECISIONS:
            raise ModelLoadError(
                f"OPENVINO_PRECISION={precision!r}: use one of {', '.join(p for p in OPENVINO_PRECISIONS if p)},"
                " or leave it empty for OpenVINO's default"
            )
        from app.worker.openvino import load_openvino

        directory = Path(cache_dir) if cache_dir is not None else get_settings().model_cache_dir
        classifier = load_openvino(weights, threads, precision, directory, device)
    else:
        from app.worker.tensorflow import load_tensorflow

        classifier = load_tensorflow(weights, threads, mixed_precision)
    warm_up_model(classifier, warmup_sizes)
    return classifier


def warm_up_model(classifier: Classifier, sizes: Sequence[int]) -> None:
    for size in sizes:  # traces the graph once and sets up each shape, off the request path
        classifier.predict(np.zeros((size, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8))


def loader_for(settings: Settings) -> Loader:
    """How `load_chosen` loads a backend: `load_classifier` with the settings, not warmed up (only the chosen is)."""

    def load(candidate: Candidate) -> Classifier:
        return load_classifier(
            settings.model_weights,
            settings.model_threads,
            (),
            backend=candidate.backend,
            precision=candidate.precision,
            cache_dir=settings.model_cache_dir,
            device=settings.openvino_device,
            mixed_precision=settings.mixed_precision,
        )

    return load


def candidates(settings: Settings) -> tuple[list[Candidate], list[Trial]]:
    """The backends to try against TensorFlow, and those not installed (for the evidence): OpenVINO at
    OPENVINO_PRECISION, or when that is empty at its default (bf16 on CPUs that have it) and at f32."""
    if not choice_cache.installed("openvino"):
        return [], [Trial("openvino", error="not installed (pip install -e '.[worker]')", installed=False)]
    precisions = [settings.openvino_precision] if settings.openvino_precision else ["", "f32"]
    return [Candidate("openvino", p) for p in precisions], []


def _load_cached(chosen: Choice | None, load: Loader) -> tuple[Classifier, Choice] | None:
    """The cached decision's backend, alone (no TensorFlow to compare with); None: no decision, or its
    backend no longer loads (then the probe runs again)."""
    if chosen is None:
        return None
    try:
        return load(Candidate(chosen.backend, chosen.precision)), chosen
    except Exception as exc:  # whatever broke it (a library, a device), the probe decides again
        log.warning("the cached choice, %s, did not load (%s): probing again", chosen.engine, exc)
        return None


def _auto(settings: Settings, load: Loader) -> tuple[Classifier, Choice]:
    before = choice_cache.read(settings)
    found = _load_cached(before, load)
    if found:
        return found
    with choice_cache.exclusive(settings):
        now = choice_cache.read(settings)
        if now != before:  # another worker on this machine probed while this one waited for the lock
            found = _load_cached(now, load)
            if found:
                return found
        todo, absent = candidates(settings)
        classifier, chosen = probe(load, todo, timing_batch(settings.max_batch), absent)
        if chosen.cacheable:
            choice_cache.write(settings, chosen)
    return classifier, chosen


def load_chosen(settings: Settings, load: Loader | None = None) -> tuple[Classifier, Choice]:
    """The worker's classifier for INFERENCE_BACKEND, warmed up, and why it is the one (logged).
    `load`: how a backend is loaded (tests pass fakes); by default `load_classifier` with the settings."""
    load = load or loader_for(settings)
    if settings.inference_backend == "auto":
        classifier, chosen = _auto(settings, load)
    else:
        classifier = load(Candidate(settings.inference_backend, settings.openvino_precision))
        chosen = Choice(settings.inference_backend, settings.openvino_precision, classifier.info.version)
    warm_up_model(classifier, WARMUP_SIZES)
    log.info("inference backend %s", chosen.summary)
    return classifier, chosen
