"""The TensorFlow backend: the Keras ResNet50 run through one compiled `tf.function` (preprocessing, the
model and top-5 in one graph). The OpenVINO backend converts this same function. On a GPU when TensorFlow
has one (the `gpu` extra's wheel), with memory growth and, by default there, mixed precision.

Importing this module sets TF_CPP_MIN_LOG_LEVEL=2 (unless already set) to silence TensorFlow's C++
INFO and WARNING lines; errors still print. TensorFlow itself is imported inside the functions only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

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

# Keras's policy for MIXED_PRECISION: float16 compute, float32 weights (and the graph's outputs, cast below).
MIXED_POLICY = "mixed_float16"


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


def use_gpus() -> list[Any]:
    """The GPUs TensorFlow sees (none with the tensorflow-cpu wheel), each set to take memory as it needs
    it rather than nearly all of it at once, so that a card can be shared (several workers, other programs).
    TensorFlow fixes this when it first uses a GPU: this must run before anything else does."""
    import tensorflow as tf

    gpus: list[Any] = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError as exc:  # TensorFlow already uses this GPU in this process
            log.warning("memory growth not set on %s: TensorFlow already uses it (%s)", gpu.name, exc)
    return gpus


def mixed_precision_on(setting: str, gpus: int) -> bool:
    """MIXED_PRECISION: `on`, `off`, or `auto`: on when TensorFlow has a GPU (float16 on a CPU is slow)."""
    return setting == "on" or (setting == "auto" and gpus > 0)


@contextmanager
def _global_policy(name: str) -> Iterator[None]:
    """Keras's global dtype policy while the model is built (its layers keep it), then the previous one again."""
    import keras

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _describe(gpu: Any) -> str:
    """ "/physical_device:GPU:0 (NVIDIA L4)" """
    import tensorflow as tf

    try:
        model = tf.config.experimental.get_device_details(gpu).get("device_name", "")
    except Exception:  # details are best effort, for the log only
        model = ""
    return f"{gpu.name} ({model})" if model else str(gpu.name)


def load_tensorflow(weights: str, threads: int, mixed_precision: str = "auto") -> TensorFlowClassifier:
    """ResNet50 on TensorFlow: on its first GPU when it has one, else the CPU."""
    import keras

    _configure_threads(threads)
    gpus = use_gpus()
    mixed = mixed_precision_on(mixed_precision, len(gpus))
    with _global_policy(MIXED_POLICY if mixed else "float32"):
        model, label = build_model(weights)
    where = _describe(gpus[0]) if gpus else "the CPU"
    if len(gpus) > 1:
        where += f" (the first of {len(gpus)} GPUs: one worker per GPU, each with its own CUDA_VISIBLE_DEVICES)"
    log.info("TensorFlow runs ResNet50 on %s in %s", where, "mixed precision (float16)" if mixed else "float32")
    if mixed and not gpus:
        log.warning("MIXED_PRECISION=on without a GPU: float16 on a CPU is many times slower than float32")
    version = f"keras-{keras.__version__}" + ("-mixed-f16" if mixed else "")
    return TensorFlowClassifier(model, ModelInfo(name=MODEL_NAME, version=version, weights=label))
