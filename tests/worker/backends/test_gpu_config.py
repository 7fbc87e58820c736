"""The TensorFlow backend's GPU set-up, on a CPU: GPUs faked where TensorFlow lists them (memory growth per
GPU, mixed precision by MIXED_PRECISION), and the CPU path as it was. Real TensorFlow throughout; a tiny model
stands in for ResNet50 where only the set-up is tested."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tensorflow")

import keras
import tensorflow as tf

from app.settings import SettingsError, load_settings
from app.worker import tensorflow as backend
from app.worker.backends import load_classifier
from app.worker.tensorflow import TensorFlowClassifier, load_tensorflow, mixed_precision_on, use_gpus

PIXELS = np.random.default_rng(3).integers(0, 256, size=(2, 224, 224, 3), dtype=np.uint8)


def fake_gpus(count: int) -> list[Any]:
    return [tf.config.PhysicalDevice(name=f"/physical_device:GPU:{i}", device_type="GPU") for i in range(count)]


@pytest.fixture
def memory_growth(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool]]:
    """Every set_memory_growth call (device name, on), none of them reaching TensorFlow."""
    calls: list[tuple[str, bool]] = []
    monkeypatch.setattr(tf.config.experimental, "set_memory_growth", lambda gpu, on: calls.append((gpu.name, on)))
    return calls


@pytest.fixture
def two_gpus(monkeypatch: pytest.MonkeyPatch, memory_growth: list[tuple[str, bool]]) -> list[Any]:
    gpus = fake_gpus(2)
    real = tf.config.list_physical_devices
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: gpus if kind == "GPU" else real(kind))
    return gpus


@pytest.fixture
def built_under(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The Keras global policy each model was built under; the model: a tiny one with ResNet50's output."""
    policies: list[str] = []

    def tiny(weights: str) -> tuple[keras.Model, str]:
        policies.append(keras.mixed_precision.global_policy().name)
        layers = keras.layers
        inputs = keras.Input((224, 224, 3))
        outputs = layers.Dense(1000, activation="softmax")(layers.GlobalAveragePooling2D()(inputs))
        return keras.Model(inputs, outputs), weights

    monkeypatch.setattr(backend, "build_model", tiny)
    return policies


def test_no_gpu_here_and_memory_growth_untouched(memory_growth: list[tuple[str, bool]]) -> None:
    assert use_gpus() == []  # tensorflow-cpu: the CPU path
    assert memory_growth == []


def test_memory_growth_is_set_on_every_gpu(two_gpus: list[Any], memory_growth: list[tuple[str, bool]]) -> None:
    assert use_gpus() == two_gpus
    assert memory_growth == [("/physical_device:GPU:0", True), ("/physical_device:GPU:1", True)]


def test_memory_growth_refused_is_a_warning(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    gpus = fake_gpus(1)
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: gpus)

    def refuse(gpu: Any, on: bool) -> None:
        raise RuntimeError("Physical devices cannot be modified after being initialized")

    monkeypatch.setattr(tf.config.experimental, "set_memory_growth", refuse)
    with caplog.at_level(logging.WARNING, logger="app.worker.tensorflow"):
        assert use_gpus() == gpus
    assert "memory growth not set on /physical_device:GPU:0" in caplog.text


@pytest.mark.parametrize(
    ("setting", "gpus", "expected"),
    [("auto", 0, False), ("auto", 1, True), ("on", 0, True), ("on", 2, True), ("off", 0, False), ("off", 1, False)],
)
def test_mixed_precision_setting(setting: str, gpus: int, expected: bool) -> None:
    assert mixed_precision_on(setting, gpus) is expected


@pytest.mark.usefixtures("two_gpus")
@pytest.mark.parametrize(
    ("setting", "policy", "version_suffix"),
    [("auto", "mixed_float16", "-mixed-f16"), ("on", "mixed_float16", "-mixed-f16"), ("off", "float32", "")],
)
def test_on_a_gpu_the_policy_follows_the_setting(
    built_under: list[str], memory_growth: list[tuple[str, bool]], setting: str, policy: str, version_suffix: str
) -> None:
    classifier = load_tensorflow("random", 0, setting)
    assert built_under == [policy]
    assert len(memory_growth) == 2  # set before the model was built
    assert classifier.info.version == f"keras-{keras.__version__}{version_suffix}"
    assert keras.mixed_precision.global_policy().name == "float32"  # only the model keeps it
    probs, _ = classifier._top5(PIXELS)
    assert probs.dtype == np.float32  # the graph casts float16 probabilities back
    top = classifier.predict(PIXELS)[0]
    assert [p for _, p in top] == sorted((p for _, p in top), reverse=True)


def test_the_cpu_path_is_unchanged(
    built_under: list[str], memory_growth: list[tuple[str, bool]], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="app.worker.tensorflow"):
        classifier = load_tensorflow("random", 0, "auto")
    assert built_under == ["float32"] and memory_growth == []
    assert classifier.info.version == f"keras-{keras.__version__}"
    assert "TensorFlow runs ResNet50 on the CPU in float32" in caplog.text


@pytest.mark.usefixtures("two_gpus", "built_under")
def test_the_device_used_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="app.worker.tensorflow"):
        load_tensorflow("random", 0, "auto")
    assert "on /physical_device:GPU:0 (the first of 2 GPUs" in caplog.text
    assert "in mixed precision (float16)" in caplog.text


def test_resnet50_in_mixed_precision_on_the_cpu(caplog: pytest.LogCaptureFixture) -> None:
    """MIXED_PRECISION=on without a GPU: the real model, float16 compute and float32 weights (slow on a
    CPU: said in a warning), its answers still well-formed."""
    with caplog.at_level(logging.WARNING, logger="app.worker.tensorflow"):
        classifier = load_classifier("random", warmup_sizes=(), mixed_precision="on")
    assert "MIXED_PRECISION=on without a GPU" in caplog.text
    assert isinstance(classifier, TensorFlowClassifier)
    last = classifier.model.layers[-1]
    assert last.dtype_policy.name == "mixed_float16" and last.kernel.dtype == "float32"
    assert keras.mixed_precision.global_policy().name == "float32"
    for top in classifier.predict(PIXELS):
        probs = [p for _, p in top]
        assert len({i for i, _ in top}) == 5 and probs == sorted(probs, reverse=True)
        assert all(isinstance(p, float) and 0.0 <= p <= 1.0 for p in probs)


def test_settings_mixed_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MIXED_PRECISION", raising=False)
    assert load_settings().mixed_precision == "auto"
    monkeypatch.setenv("MIXED_PRECISION", "off")
    assert load_settings().mixed_precision == "off"
    monkeypatch.setenv("MIXED_PRECISION", "yes")
    with pytest.raises(SettingsError, match=r"MIXED_PRECISION is not valid .*'auto', 'on' or 'off'.*got 'yes'"):
        load_settings()
