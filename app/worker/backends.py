"""Load the backend INFERENCE_BACKEND names. TensorFlow and OpenVINO are imported only when chosen, so
the web app and the worker's tests need neither."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from app.settings import BACKENDS, OPENVINO_PRECISIONS, get_settings
from app.worker.classifier import IMAGE_SIZE, WARMUP_SIZES, Classifier, ModelLoadError, StandInClassifier


def load_classifier(
    weights: str,
    threads: int = 0,
    warmup_sizes: Sequence[int] = WARMUP_SIZES,
    *,
    backend: str = "tensorflow",
    precision: str = "",
    cache_dir: Path | str | None = None,
) -> Classifier:
    """ResNet50 with `weights` ("imagenet", "random" or a weights file path) on `backend`, warmed up.

    tensorflow: `threads` > 0 sets TensorFlow's intra-op threads to that and inter-op to 1; it only
    works before TensorFlow has executed anything in this process (else a logged warning).
    openvino: `threads` > 0 is OpenVINO's INFERENCE_NUM_THREADS; `precision` its
    INFERENCE_PRECISION_HINT ("f32", "bf16", "f16"; "" for its default: bf16 on CPUs that have it);
    the converted model is cached in `cache_dir` (default: the MODEL_CACHE_DIR setting).
    Takes a few seconds; an OpenVINO start that has to convert, about half a minute.
    """
    if backend not in BACKENDS:
        raise ModelLoadError(f"INFERENCE_BACKEND={backend!r} is not a backend: use one of {', '.join(BACKENDS)}")
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
        classifier = load_openvino(weights, threads, precision, directory)
    else:
        from app.worker.tensorflow import load_tensorflow

        classifier = load_tensorflow(weights, threads)
    for size in warmup_sizes:  # traces the graph once and sets up each shape, off the request path
        classifier.predict(np.zeros((size, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8))
    return classifier
