"""The classifier the worker uses, whatever runs it: the interface, and a stand-in for tests.

The backends (app/worker/tensorflow.py, app/worker/openvino.py) implement it; app/worker/backends.py
loads the one chosen. This module needs neither TensorFlow nor OpenVINO.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from app.settings import model_id

MODEL_NAME = "resnet50"
IMAGE_SIZE = 224
TOP_K = 5
CLASSES = 1000
# Warm-up batch sizes: one image, and a typical busy batch, so oneDNN has set up both shapes.
WARMUP_SIZES = (1, 8)


class ModelLoadError(RuntimeError):
    """The model could not be loaded (weights, backend, settings); the message says what to do instead."""


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str  # the engine that answers: "keras-3.15.1" or "openvino-2026.4.1-bf16" (its precision)
    weights: str  # "imagenet", "random", or the weights file's basename
    backend: str = "tensorflow"

    @property
    def id(self) -> str:
        """Identifies the model's outputs, e.g. in result cache keys: only [a-z0-9._-]. The same for both
        backends: they agree to within rounding (bench/agreement.py measures how closely)."""
        return model_id(self.name, self.weights)


class Classifier(ABC):
    """A loaded, warmed-up ResNet50: top-5 classes for a batch of 224x224 RGB uint8 images.
    The interface the worker uses (`info`, `predict`); each backend supplies `_top5`."""

    info: ModelInfo

    def predict(self, pixels: np.ndarray) -> list[list[tuple[int, float]]]:
        """Per image, the top 5 (class index, probability), most probable first. One batched call."""
        if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
            raise ValueError(f"expected uint8 (N, {IMAGE_SIZE}, {IMAGE_SIZE}, 3), got {pixels.dtype} {pixels.shape}")
        if len(pixels) == 0:
            return []
        probs, indices = self._top5(pixels)
        return [
            [(int(i), float(p)) for i, p in zip(row_i, row_p, strict=True)]
            for row_i, row_p in zip(indices, probs, strict=True)
        ]

    @abstractmethod
    def _top5(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities, class indices), each (N, TOP_K), most probable first."""


class ClassifierLike(Protocol):
    """What the worker loop needs of a classifier (a Classifier, or a test's wrapper around one)."""

    @property
    def info(self) -> ModelInfo: ...
    def predict(self, pixels: np.ndarray) -> list[list[tuple[int, float]]]: ...


class StandInClassifier(Classifier):
    """A tiny, deterministic stand-in with ResNet50's interface, for tests of everything around the model:
    the same pixels always give the same top 5, and different images (almost always) different ones."""

    def __init__(self, weights: str = "random") -> None:
        self.info = ModelInfo(name=MODEL_NAME, version="stand-in", weights=weights, backend="stand-in")

    def _top5(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        indices, probs = [], []
        for image in pixels:
            digest = hashlib.sha256(image.tobytes()).digest()
            first = int.from_bytes(digest[:4], "big") % (CLASSES - TOP_K)
            indices.append([first + k for k in range(TOP_K)])
            probs.append([0.5 / (k + 1) for k in range(TOP_K)])
        return np.array(probs, dtype=np.float32), np.array(indices, dtype=np.int64)
