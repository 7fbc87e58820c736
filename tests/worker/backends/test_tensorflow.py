"""ResNet50 through TensorFlow with random weights; the ImageNet download failing, against local ports
(the tests never download the 100 MB). The OpenVINO backend: test_openvino.py."""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from app.worker import weights
from app.worker.backends import load_classifier
from app.worker.classifier import ModelInfo, ModelLoadError
from app.worker.tensorflow import TensorFlowClassifier


@pytest.fixture(scope="module")
def classifier() -> TensorFlowClassifier:
    loaded = load_classifier("random")  # slow (seconds): once per module
    assert isinstance(loaded, TensorFlowClassifier)
    return loaded


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, size=(4, 224, 224, 3), dtype=np.uint8)


def test_info(classifier: TensorFlowClassifier) -> None:
    assert classifier.info.name == "resnet50"
    assert classifier.info.weights == "random"
    assert classifier.info.version.startswith("keras-")
    assert classifier.info.backend == "tensorflow"
    assert classifier.info.id == "resnet50-random"


def test_info_id_is_cache_key_safe() -> None:
    assert ModelInfo("resnet50", "keras-3", "imagenet").id == "resnet50-imagenet"
    assert ModelInfo("resnet50", "keras-3", "My Weights v2.h5").id == "resnet50-my-weights-v2"


def test_top5_shape_order_and_range(classifier: TensorFlowClassifier, images: np.ndarray) -> None:
    result = classifier.predict(images)
    assert len(result) == len(images)
    for top in result:
        assert len(top) == 5
        indices = [i for i, _ in top]
        probs = [p for _, p in top]
        assert len(set(indices)) == 5 and all(isinstance(i, int) and 0 <= i < 1000 for i in indices)
        assert probs == sorted(probs, reverse=True)
        assert all(0.0 <= p <= 1.0 for p in probs)
        assert sum(probs) <= 1.0 + 1e-5


def test_empty_batch(classifier: TensorFlowClassifier) -> None:
    assert classifier.predict(np.zeros((0, 224, 224, 3), np.uint8)) == []


@pytest.mark.parametrize(
    "pixels",
    [
        np.zeros((1, 224, 224, 3), np.float32),
        np.zeros((224, 224, 3), np.uint8),
        np.zeros((1, 64, 64, 3), np.uint8),
    ],
)
def test_rejects_wrong_input(classifier: TensorFlowClassifier, pixels: np.ndarray) -> None:
    with pytest.raises(ValueError, match="uint8"):
        classifier.predict(pixels)


def _assert_close(a: list[tuple[int, float]], b: list[tuple[int, float]], tol: float) -> None:
    assert a[0][0] == b[0][0]
    pa, pb = dict(a), dict(b)
    common = pa.keys() & pb.keys()
    assert len(common) >= 4  # ties between tiny probabilities may swap the fifth
    assert all(abs(pa[i] - pb[i]) <= tol for i in common)


def test_batch_equals_single_predictions(classifier: TensorFlowClassifier, images: np.ndarray) -> None:
    batched = classifier.predict(images)
    for i in range(len(images)):
        _assert_close(batched[i], classifier.predict(images[i : i + 1])[0], tol=1e-4)


def test_random_weights_are_deterministic(classifier: TensorFlowClassifier, images: np.ndarray) -> None:
    again = load_classifier("random", warmup_sizes=())
    assert again.info == classifier.info
    for first, second in zip(classifier.predict(images), again.predict(images), strict=True):
        _assert_close(first, second, tol=1e-6)


def test_random_weights_leave_global_rngs_alone() -> None:
    random.seed(99)
    expected = [random.random() for _ in range(3)]
    random.seed(99)
    load_classifier("random", warmup_sizes=())
    assert [random.random() for _ in range(3)] == expected


def test_weights_file_round_trip(classifier: TensorFlowClassifier, images: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "Fine-Tuned.weights.h5"
    classifier.model.save_weights(path)
    loaded = load_classifier(str(path), warmup_sizes=())
    assert loaded.info.weights == "Fine-Tuned.weights.h5"
    assert loaded.info.id == "resnet50-fine-tuned.weights"
    _assert_close(loaded.predict(images)[0], classifier.predict(images)[0], tol=1e-6)


def test_unknown_backend() -> None:
    with pytest.raises(ModelLoadError, match="INFERENCE_BACKEND='pytorch' is not a backend: use one of tensorflow"):
        load_classifier("random", backend="pytorch")


def test_missing_weights_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no such file"):
        load_classifier(str(tmp_path / "missing.h5"))


def test_unreadable_weights_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.h5"
    path.write_bytes(b"not an hdf5 file")
    with pytest.raises(ModelLoadError, match="cannot load"):
        load_classifier(str(path))


@pytest.fixture
def empty_keras_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty Keras cache (KERAS_HOME), so that the ImageNet weights must be downloaded."""
    import keras.src.backend.config

    home = tmp_path / "keras"
    home.mkdir()  # Keras falls back to /tmp/.keras for a directory it cannot write to
    monkeypatch.setenv("KERAS_HOME", str(home))
    # Keras reads KERAS_HOME once, when it is imported (earlier tests have imported it).
    monkeypatch.setattr(keras.src.backend.config, "_KERAS_DIR", str(home))
    return home


def _assert_helpful(message: str) -> None:
    assert "MODEL_WEIGHTS=random" in message
    assert f"MODEL_WEIGHTS=/path/to/{weights.IMAGENET_WEIGHTS_FILE}" in message
    assert f"~/.keras/models/{weights.IMAGENET_WEIGHTS_FILE} (or under $KERAS_HOME)" in message  # where to put it


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A local port nothing listens on: a connection to it is refused at once, as without a network.
    Bound (not listening) for the test's length, so that no other process can start listening there."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        yield port


def test_imagenet_without_network(monkeypatch: pytest.MonkeyPatch, empty_keras_cache: Path, closed_port: int) -> None:
    url = f"http://127.0.0.1:{closed_port}/{weights.IMAGENET_WEIGHTS_FILE}"
    monkeypatch.setattr(weights, "IMAGENET_WEIGHTS_URL", url)
    started = time.monotonic()
    with pytest.raises(ModelLoadError) as info:
        load_classifier("imagenet")
    assert time.monotonic() - started < 10  # refused, not timed out
    message = str(info.value)
    assert message.startswith("Could not get the ImageNet weights for ResNet50 (")
    assert url in message and "Connection refused" in message  # the reason
    assert "This machine may have no internet access" in message
    _assert_helpful(message)
    # Looked for in the empty cache (the directory made there), and nothing left in it.
    assert list((empty_keras_cache / "models").iterdir()) == []
    assert socket.getdefaulttimeout() is None  # restored


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A server that accepts connections and never answers: a stalled download."""
    server = socket.create_server(("127.0.0.1", 0))
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}/resnet50.h5"
    finally:
        server.close()


@pytest.mark.usefixtures("empty_keras_cache")
def test_imagenet_download_that_stalls_times_out(monkeypatch: pytest.MonkeyPatch, silent_server: str) -> None:
    monkeypatch.setattr(weights, "IMAGENET_WEIGHTS_URL", silent_server)
    monkeypatch.setattr(weights, "DOWNLOAD_TIMEOUT", 1.0)
    started = time.monotonic()
    with pytest.raises(ModelLoadError) as info:
        load_classifier("imagenet")
    assert time.monotonic() - started < 10
    _assert_helpful(str(info.value))
    assert socket.getdefaulttimeout() is None  # restored
