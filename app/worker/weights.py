"""ResNet50's weights: "random" (seeded, the same in every worker), "imagenet" (Keras's file, fetched once
into its cache with a timeout), or a path to a weights file; and the Keras model built with them."""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from app.worker.classifier import ModelLoadError

if TYPE_CHECKING:
    import keras

# Same seed in every worker: "random" weights are identical everywhere, so results are reproducible.
RANDOM_SEED = 1234
# Keras's own location and checksum for these weights (keras/src/applications/resnet.py); fetching
# them ourselves keeps the download (network errors) apart from building the model (real bugs).
IMAGENET_WEIGHTS_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/resnet/resnet50_weights_tf_dim_ordering_tf_kernels.h5"
)
IMAGENET_WEIGHTS_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels.h5"
IMAGENET_WEIGHTS_MD5 = "2cb95161c43110f7111970584f804107"
# Seconds a stalled connection may block before the download fails: a firewall that drops packets
# would otherwise hang the worker's start-up. Applies per socket operation, not to the whole file.
DOWNLOAD_TIMEOUT = 20.0


def _imagenet_help(reason: str) -> str:
    cache = f"~/.keras/models/{IMAGENET_WEIGHTS_FILE} (or under $KERAS_HOME)"
    return (
        f"Could not get the ImageNet weights for ResNet50 ({reason}). This machine may have no internet "
        "access. Alternatives: MODEL_WEIGHTS=random (untrained weights, same speed: for tests and "
        f"benchmarks); MODEL_WEIGHTS=/path/to/{IMAGENET_WEIGHTS_FILE} (a copy of the file from "
        f"{IMAGENET_WEIGHTS_URL}); or download that file beforehand to {cache}."
    )


@contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    # Keras's get_file uses urllib with no timeout; the default socket timeout is the only handle.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _imagenet_weights_path() -> str:
    """The cached weights file (in Keras's cache, ~/.keras/models), downloaded on first use."""
    import keras

    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT):
            path: str = keras.utils.get_file(
                IMAGENET_WEIGHTS_FILE,
                IMAGENET_WEIGHTS_URL,
                cache_subdir="models",
                file_hash=IMAGENET_WEIGHTS_MD5,
            )
    except Exception as exc:  # get_file raises bare Exception for network errors, ValueError for a bad hash
        raise ModelLoadError(_imagenet_help(str(exc))) from exc
    return path


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed Keras's initializers, then give Python's and NumPy's global generators back their state,
    so the rest of the process (e.g. random worker names) is not made predictable."""
    import keras

    python_state, numpy_state = random.getstate(), np.random.get_state()
    keras.utils.set_random_seed(seed)
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def weights_label(weights: str) -> str:
    """The weights' label for ModelInfo; a missing weights file is a ModelLoadError."""
    if weights in {"imagenet", "random"}:
        return weights
    if not Path(weights).is_file():
        raise ModelLoadError(
            f"MODEL_WEIGHTS={weights!r}: no such file. Use 'imagenet', 'random', or the path to a "
            f"ResNet50 weights file such as {IMAGENET_WEIGHTS_FILE}."
        )
    return Path(weights).name


def build_model(weights: str) -> tuple[keras.Model, str]:
    """The model and the weights' label for ModelInfo."""
    import keras

    label = weights_label(weights)
    if weights == "random":
        with _seeded(RANDOM_SEED):
            return keras.applications.resnet50.ResNet50(weights=None), label
    path = _imagenet_weights_path() if weights == "imagenet" else weights
    try:
        return keras.applications.resnet50.ResNet50(weights=path), label
    except (OSError, ValueError) as exc:  # unreadable file, or weights for another architecture
        raise ModelLoadError(f"cannot load ResNet50 weights from {path}: {exc}") from exc
