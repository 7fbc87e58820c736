"""ResNet50 for the worker, on one of two inference backends (INFERENCE_BACKEND):

- `tensorflow`: the Keras model run through one compiled `tf.function`;
- `openvino`: that same `tf.function` (preprocessing, model and top-5) converted by OpenVINO once,
  kept on disk under MODEL_CACHE_DIR, and compiled for the CPU at every start.

The only module that imports TensorFlow and OpenVINO, and only when a backend needs them (inside the
functions below), so the web app starts without either, and an OpenVINO worker whose converted model
is already cached never loads TensorFlow (about 0.5 GB less memory per worker, seconds less start-up).

Importing this module sets TF_CPP_MIN_LOG_LEVEL=2 (unless already set) to silence TensorFlow's C++
INFO and WARNING lines; errors still print. It only works if TensorFlow has not been imported yet.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")  # the tf.function below needs this backend

import numpy as np

from app.settings import BACKENDS, OPENVINO_PRECISIONS, get_settings, model_id

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

log = logging.getLogger(__name__)

MODEL_NAME = "resnet50"
IMAGE_SIZE = 224
TOP_K = 5
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
# Warm-up batch sizes: one image, and a typical busy batch, so oneDNN has set up both shapes.
WARMUP_SIZES = (1, 8)
# Part of the OpenVINO cache's name: bump it when the converted graph changes (e.g. _compile below).
OPENVINO_CACHE_FORMAT = 1
# A conversion's temporary directory older than this is left over from a crash: removed.
STALE_TEMP_SECONDS = 3600


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


class TensorFlowClassifier(Classifier):
    def __init__(self, model: keras.Model, info: ModelInfo) -> None:
        self.model = model
        self.info = info
        self._run = _compile(model)

    def _top5(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import tensorflow as tf

        probs, indices = self._run(tf.constant(pixels))
        return probs.numpy(), indices.numpy()


class OpenVINOClassifier(Classifier):
    """The converted graph compiled for the CPU: uint8 pixels in, the same top-5 out."""

    def __init__(self, compiled: Any, info: ModelInfo, cache_path: Path, cache_hit: bool) -> None:
        self.info = info
        self.cache_path = cache_path  # the converted model's .xml (its weights: the .bin beside it)
        self.cache_hit = cache_hit  # False: this start converted the model (and wrote the cache)
        self._request = compiled.create_infer_request()  # one batch at a time: one request suffices

    def _top5(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # share_inputs: no copy of the batch; the outputs are copied out of the request's buffers.
        result = self._request.infer({0: np.ascontiguousarray(pixels)}, share_inputs=True)
        return result[0], result[1]  # the outputs of _compile's function: values, then indices


def _compile(model: keras.Model) -> Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]]:
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


def _imagenet_help(reason: str) -> str:
    cache = os.path.join(os.environ.get("KERAS_HOME", "~/.keras"), "models", IMAGENET_WEIGHTS_FILE)
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


def _weights_label(weights: str) -> str:
    """The weights' label for ModelInfo; a missing weights file is a ModelLoadError."""
    if weights in {"imagenet", "random"}:
        return weights
    if not Path(weights).is_file():
        raise ModelLoadError(
            f"MODEL_WEIGHTS={weights!r}: no such file. Use 'imagenet', 'random', or the path to a "
            f"ResNet50 weights file such as {IMAGENET_WEIGHTS_FILE}."
        )
    return Path(weights).name


def _build(weights: str) -> tuple[keras.Model, str]:
    """The model and the weights' label for ModelInfo."""
    import keras

    label = _weights_label(weights)
    if weights == "random":
        with _seeded(RANDOM_SEED):
            return keras.applications.resnet50.ResNet50(weights=None), label
    path = _imagenet_weights_path() if weights == "imagenet" else weights
    try:
        return keras.applications.resnet50.ResNet50(weights=path), label
    except (OSError, ValueError) as exc:  # unreadable file, or weights for another architecture
        raise ModelLoadError(f"cannot load ResNet50 weights from {path}: {exc}") from exc


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
    if backend == "openvino":
        if precision not in OPENVINO_PRECISIONS:
            raise ModelLoadError(
                f"OPENVINO_PRECISION={precision!r}: use one of {', '.join(p for p in OPENVINO_PRECISIONS if p)},"
                " or leave it empty for OpenVINO's default"
            )
        directory = Path(cache_dir) if cache_dir is not None else get_settings().model_cache_dir
        classifier = _load_openvino(weights, threads, precision, directory)
    else:
        import keras

        _configure_threads(threads)
        model, label = _build(weights)
        info = ModelInfo(name=MODEL_NAME, version=f"keras-{keras.__version__}", weights=label)
        classifier = TensorFlowClassifier(model, info)
    for size in warmup_sizes:  # traces the graph once and sets up each shape, off the request path
        classifier.predict(np.zeros((size, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8))
    return classifier


def _short_version(version: str) -> str:
    """ "2026.4.1-22982-e213a147257-releases/2026/4" -> "2026.4.1" """
    return version.split("-", 1)[0]


def _file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def openvino_cache_path(weights: str, cache_dir: Path) -> Path:
    """The converted model's .xml (its weights: the .bin beside it), in a directory named by what the
    conversion depends on: the model id, a weights file's content (a file replaced under the same name
    is converted again), the Keras version (it makes the "random" weights), OpenVINO's version and
    the format of the converted graph. ImageNet weights are fixed by their checksum."""
    from importlib.metadata import version

    import openvino as ov

    parts = [model_id(MODEL_NAME, weights)]
    if weights not in {"imagenet", "random"}:
        parts.append(_file_digest(weights))
    parts += [f"keras{version('keras')}", f"openvino{_short_version(ov.get_version())}", f"v{OPENVINO_CACHE_FORMAT}"]
    return cache_dir / "-".join(parts) / "model.xml"


def _convert_to_cache(weights: str, xml: Path) -> None:
    """Build the Keras model, convert `_compile(model)` (uint8 pixels in, top-5 out) and save it as
    `xml`, atomically: written to a temporary directory beside its own, then renamed into place, so a
    crash leaves no half-written model. Runs in a child process (TensorFlow's memory goes with it)."""
    import openvino as ov

    model, _ = _build(weights)
    converted = ov.convert_model(_compile(model))
    final = xml.parent
    final.parent.mkdir(parents=True, exist_ok=True)
    temp = final.parent / f".{final.name}.tmp-{os.getpid()}-{time.time_ns()}"
    try:
        temp.mkdir()
        # f32 weights as Keras has them (save_model would halve them to f16 by default): the precision
        # is chosen when compiling (OPENVINO_PRECISION), not baked into the file.
        ov.save_model(converted, temp / xml.name, compress_to_fp16=False)
        try:
            temp.rename(final)
        except OSError:  # another worker converted the same model first: keep its copy
            if not xml.is_file():
                raise
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def _remove_stale_temps(cache_dir: Path) -> None:
    """Temporary directories of conversions that crashed (a live one is younger than this)."""
    for path in cache_dir.glob(".*.tmp-*"):
        try:
            if time.time() - path.stat().st_mtime > STALE_TEMP_SECONDS:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass


def _convert_main(weights: str, xml: str) -> None:
    """The child's entry point: a ModelLoadError's message goes to stdout, with exit status 2."""
    try:
        _convert_to_cache(weights, Path(xml))
    except ModelLoadError as exc:
        print(exc)
        sys.exit(2)


def _convert_in_child(weights: str, xml: Path) -> None:
    """Convert in a fresh interpreter, which imports TensorFlow, converts, and exits, giving its memory
    back (a plain subprocess: multiprocessing's spawn would re-run the caller's main module)."""
    root = str(Path(__file__).resolve().parents[2])  # the project, for a checkout run without install
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    code = "import sys; from app.worker.model import _convert_main; _convert_main(sys.argv[1], sys.argv[2])"
    done = subprocess.run(
        [sys.executable, "-c", code, weights, str(xml)], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode == 2 and done.stdout.strip():
        raise ModelLoadError(done.stdout.strip().splitlines()[-1])
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-20:])
        raise ModelLoadError(f"converting ResNet50 for OpenVINO failed (exit status {done.returncode}):\n{tail}")


def _load_openvino(weights: str, threads: int, precision: str, cache_dir: Path) -> OpenVINOClassifier:
    try:
        import openvino as ov
    except ImportError as exc:
        raise ModelLoadError(
            f"INFERENCE_BACKEND=openvino needs the openvino package ({exc}): pip install -e '.[worker]'"
        ) from exc

    label = _weights_label(weights)
    xml = openvino_cache_path(weights, cache_dir)
    core = ov.Core()
    # LATENCY: one stream using every thread, for one batch at a time (THROUGHPUT would split the
    # threads between streams that a single request cannot use together).
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
    if precision:
        config["INFERENCE_PRECISION_HINT"] = precision
    if threads > 0:
        config["INFERENCE_NUM_THREADS"] = threads

    compiled = None
    cache_hit = xml.is_file() and xml.with_suffix(".bin").is_file()
    if cache_hit:
        try:
            compiled = core.compile_model(core.read_model(xml), "CPU", config)
        except RuntimeError as exc:  # a damaged file: convert again
            log.warning("cached OpenVINO model %s is unreadable (%s): converting again", xml.parent, exc)
            shutil.rmtree(xml.parent, ignore_errors=True)
            cache_hit = False
    if compiled is None:
        _remove_stale_temps(cache_dir)
        log.info("converting ResNet50 (%s weights) for OpenVINO into %s", label, xml.parent)
        started = time.perf_counter()
        _convert_in_child(weights, xml)
        log.info("converted in %.1f s", time.perf_counter() - started)
        compiled = core.compile_model(core.read_model(xml), "CPU", config)
    resolved = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()  # e.g. "bf16"
    info = ModelInfo(
        name=MODEL_NAME,
        version=f"openvino-{_short_version(ov.get_version())}-{resolved}",
        weights=label,
        backend="openvino",
    )
    return OpenVINOClassifier(compiled, info, cache_path=xml, cache_hit=cache_hit)
