"""The TensorFlow backend: the Keras ResNet50 run through one compiled `tf.function` (preprocessing, the
model and top-5 in one graph). The OpenVINO backend converts this same function.

Importing this module sets TF_CPP_MIN_LOG_LEVEL=2 (unless already set) to silence TensorFlow's C++
INFO and WARNING lines; errors still print. TensorFlow itself is imported inside the functions only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

# Defaults for the libraries, read when TensorFlow is first imported (set here, read nowhere else).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")  # the tf.function below needs this backend

import numpy as np

from app.worker.classifier import IMAGE_SIZE, MODEL_NAME, TOP_K, Classifier, ModelInfo
from app.worker.weights import build_model

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

log = logging.getLogger(__name__)


class TensorFlowClassifier(Classifier):
    def __init__(self, model: keras.Model, info: ModelInfo) -> None:
        self.model = model
        self.info = info
        self._run = compile_graph(model)

    def _top5(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import tensorflow as tf

        probs, indices = self._run(tf.constant(pixels))
        return probs.numpy(), indices.numpy()


def compile_graph(model: keras.Model) -> Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]]:
    """One graph for every batch size (None batch dimension: no retracing). Preprocessing and top-k run
    inside it. No jit_compile: XLA measured no faster here and recompiles for every new batch size.
    The OpenVINO backend converts this same function, so both backends preprocess identically."""
    import keras
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 3], tf.uint8)])
    def run(pixels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        x = keras.applications.resnet50.preprocess_input(tf.cast(pixels, tf.float32))
        probs = tf.cast(model(x, training=False), tf.float32)
        top = tf.math.top_k(probs, k=TOP_K, sorted=True)
        return top.values, top.indices

    return run


def _configure_threads(threads: int) -> None:
    """intra-op = `threads`, inter-op = 1: one batch uses the cores it is given, with no second op
    competing. TensorFlow fixes these when it first runs anything, so this must come first; later,
    it is only a warning (e.g. a test process that already ran TensorFlow), not a failed start."""
    if threads <= 0:
        return
    import tensorflow as tf

    threading = tf.config.threading
    if (threading.get_intra_op_parallelism_threads(), threading.get_inter_op_parallelism_threads()) == (
        threads,
        1,
    ):
        return
    try:
        threading.set_intra_op_parallelism_threads(threads)
        threading.set_inter_op_parallelism_threads(1)
    except RuntimeError as exc:
        log.warning("TensorFlow threads not set to %d: TensorFlow already ran in this process (%s)", threads, exc)


def load_tensorflow(weights: str, threads: int) -> TensorFlowClassifier:
    import keras

    _configure_threads(threads)
    model, label = build_model(weights)
    return TensorFlowClassifier(model, ModelInfo(name=MODEL_NAME, version=f"keras-{keras.__version__}", weights=label))
