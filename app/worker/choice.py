"""INFERENCE_BACKEND=auto: the fastest backend whose answers agree with TensorFlow's (the reference model) on
the probe images, else TensorFlow; and the evidence. app/worker/backends.py runs it at the worker's start
(through the cache, app/worker/choice_cache.py, so a restart loads only the chosen backend).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import numpy as np

from app.worker.agreement import Agreement, Top5, compare, disagreement, predict_all, probe_images
from app.worker.classifier import Classifier, ModelLoadError

log = logging.getLogger(__name__)

PROBE_IMAGES = 28  # 4 of each of the probe's 7 kinds: enough to tell a different model, quick to run
TIMING_BATCH = 16  # a typical busy batch, capped by MAX_BATCH
TIMED_ROUNDS = 3  # each candidate counts its fastest batch of these: other load on the machine only slows
# A candidate replaces TensorFlow only when at least this much faster: a smaller gain is within the noise
# of a few timed batches, and TensorFlow is the reference.
MIN_SPEEDUP_OVER_TENSORFLOW = 1.1


def timing_batch(max_batch: int) -> int:
    """The batch size the probe times: TIMING_BATCH, or MAX_BATCH if smaller (0: MAX_BATCH is timed later)."""
    return min(max_batch, TIMING_BATCH) if max_batch > 0 else TIMING_BATCH


@dataclass(frozen=True)
class Candidate:
    backend: str  # "tensorflow" or "openvino"
    precision: str = ""  # openvino: "" for its default on this CPU (bf16 where it has it), or e.g. "f32"


REFERENCE = Candidate("tensorflow")
Loader = Callable[[Candidate], Classifier]


@dataclass(frozen=True)
class Trial:
    """One backend's evidence: its speed and its agreement with TensorFlow, or why it did not run."""

    backend: str
    precision: str = ""
    engine: str = ""  # what answered (ModelInfo.version), e.g. "openvino-2026.4.1-bf16"
    images_per_second: float = 0.0
    agreement: Agreement | None = None  # None for TensorFlow itself
    verdict: str = ""  # why it does not agree with TensorFlow ("" when it does)
    error: str = ""  # why it did not load or run
    installed: bool = True

    @property
    def qualifies(self) -> bool:
        return not self.error and not self.verdict

    def describe(self) -> str:
        name = self.engine or "-".join(filter(None, (self.backend, self.precision)))
        if self.error:
            return f"{name}: {self.error}"
        if self.agreement is None:
            return f"{name} {self.images_per_second:.1f} images/s (reference)"
        a, verdict = self.agreement, self.verdict or "agrees"
        top = f"top-1 {a.top1_agreement:.0%}, top-5 {a.top5_overlap:.1%}"
        return f"{name} {self.images_per_second:.1f} images/s, {top}: {verdict}"


@dataclass(frozen=True)
class Choice:
    """The backend a worker runs and why: set by INFERENCE_BACKEND, or probed (then with the evidence)."""

    backend: str
    precision: str = ""
    engine: str = ""
    reason: str = "set by INFERENCE_BACKEND"
    trials: tuple[Trial, ...] = ()
    measured_at: float = 0.0  # when the probe ran; 0: no probe
    images: int = 0  # probe images compared
    batch: int = 0  # the batch size timed
    cached: bool = False  # read from the cache: this start ran no probe

    @property
    def cacheable(self) -> bool:
        """Not when an installed backend failed: that may be passing (memory, disk), so the next start retries."""
        return not any(t.error and t.installed for t in self.trials)

    @property
    def summary(self) -> str:
        """One line, the choice and its evidence: for the log, the heartbeat and the admin page."""
        engine = self.engine or self.backend
        if not self.measured_at:
            return f"{engine}: {self.reason}"
        when = datetime.fromtimestamp(self.measured_at, UTC).strftime("%Y-%m-%d %H:%M UTC")
        evidence = "; ".join(t.describe() for t in self.trials)
        cached = ", cached" if self.cached else ""
        return (
            f"{engine}: {self.reason} ({evidence}; {self.images} probe images, batch {self.batch},"
            f" measured {when}{cached})"
        )


def _try(
    load: Loader, candidate: Candidate, images: np.ndarray, batch: int, expected: list[Top5]
) -> tuple[Trial, Classifier | None]:
    """Load a candidate and compare its answers with TensorFlow's. Any failure of an optional engine is
    evidence, not a failed start: TensorFlow remains."""
    trial = Trial(candidate.backend, candidate.precision)
    try:
        classifier = load(candidate)
        agreement = compare(classifier.info.version, expected, predict_all(classifier, images, batch))
    except Exception as exc:  # whatever it is, the worker starts on TensorFlow
        log.warning("backend %s failed in the probe: %s", candidate, exc)
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return replace(trial, error=f"failed: {first_line}"), None
    verdict = disagreement(agreement)
    return replace(trial, engine=classifier.info.version, agreement=agreement, verdict=verdict), classifier


def _speeds(classifiers: Sequence[Classifier], pixels: np.ndarray) -> list[float | str]:
    """Images/s of each, its fastest of TIMED_ROUNDS batches of `pixels` (the first run of that batch size
    was the comparison's). The rounds take the classifiers in turn, so a burst of other work on the machine
    slows all of them rather than one. A classifier that fails: its error message instead."""
    results: list[float | str] = [0.0] * len(classifiers)
    for _ in range(TIMED_ROUNDS):
        for i, classifier in enumerate(classifiers):
            if isinstance(results[i], str):
                continue
            started = time.perf_counter()
            try:
                classifier.predict(pixels)
            except Exception as exc:  # evidence against this candidate, as in _try
                results[i] = f"failed while timed: {exc}"
                continue
            results[i] = max(float(results[i]), len(pixels) / max(time.perf_counter() - started, 1e-9))
    return results


def _pick(trials: Sequence[Trial]) -> tuple[int, str]:
    """The index of the chosen trial (0 is TensorFlow's) and why."""
    best = max(range(len(trials)), key=lambda i: (trials[i].qualifies, trials[i].images_per_second))
    if best == 0:
        return 0, "no other backend agrees with TensorFlow and is faster"
    if trials[best].images_per_second < MIN_SPEEDUP_OVER_TENSORFLOW * trials[0].images_per_second:
        return 0, f"no backend that agrees with TensorFlow is {MIN_SPEEDUP_OVER_TENSORFLOW - 1:.0%} faster"
    return best, "the fastest backend that agrees with TensorFlow"


def probe(
    load: Loader, candidates: Sequence[Candidate], batch: int, absent: Sequence[Trial] = ()
) -> tuple[Classifier, Choice]:
    """Load TensorFlow and each candidate, compare their answers on the probe images, time them, and keep the
    fastest that agrees (`absent`: candidates not installed, for the evidence). TensorFlow failing to load
    fails the start (ModelLoadError): there is nothing to compare with."""
    images = probe_images(PROBE_IMAGES)
    reference = load(REFERENCE)
    expected = predict_all(reference, images, batch)
    trials, classifiers, failed = [Trial(REFERENCE.backend, engine=reference.info.version)], [reference], []
    for candidate in candidates:
        trial, classifier = _try(load, candidate, images, batch, expected)
        if classifier is None:
            failed.append(trial)
        elif trial.engine not in {t.engine for t in trials}:  # e.g. OpenVINO's default is f32 on this CPU
            trials.append(trial)
            classifiers.append(classifier)
    for i, speed in enumerate(_speeds(classifiers, images[:batch])):
        change = {"error": speed} if isinstance(speed, str) else {"images_per_second": round(speed, 1)}
        trials[i] = replace(trials[i], **change)
    if trials[0].error:
        raise ModelLoadError(f"TensorFlow {trials[0].error}")
    chosen, reason = _pick(trials)
    winner = trials[chosen]
    evidence = (*trials, *failed, *absent)
    choice = Choice(winner.backend, winner.precision, winner.engine, reason, evidence, time.time(), len(images), batch)
    return classifiers[chosen], choice
