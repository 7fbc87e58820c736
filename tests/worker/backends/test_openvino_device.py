"""OPENVINO_DEVICE: checked against the devices OpenVINO finds before anything is converted or compiled.
(Compiling for AUTO from the converted model: test_openvino.py, which converts it once.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("openvino")

import openvino as ov

from app.settings import load_settings
from app.worker import openvino
from app.worker.backends import load_classifier
from app.worker.classifier import ModelLoadError
from app.worker.openvino import check_device

ONE_GPU = ["CPU", "GPU"]  # OpenVINO lists a single GPU as "GPU"
TWO_GPUS = ["CPU", "GPU.0", "GPU.1"]


@pytest.mark.parametrize(
    ("device", "available"),
    [
        ("CPU", ["CPU"]),
        ("AUTO", ["CPU"]),
        ("GPU", ONE_GPU),
        ("GPU.0", ONE_GPU),
        ("GPU", TWO_GPUS),
        ("GPU.1", TWO_GPUS),
        ("AUTO:GPU,CPU", ONE_GPU),
        ("AUTO:-CPU", TWO_GPUS),
        ("MULTI:GPU.1,GPU.0", TWO_GPUS),
        ("HETERO:GPU,CPU", TWO_GPUS),
        ("BATCH:GPU(4)", ONE_GPU),
    ],
)
def test_devices_the_machine_has(device: str, available: list[str]) -> None:
    check_device(device, available)


@pytest.mark.parametrize(
    ("device", "available"),
    [
        ("GPU", ["CPU"]),
        ("GPU.2", TWO_GPUS),
        ("NPU", TWO_GPUS),
        ("AUTO:GPU,CPU", ["CPU"]),
        ("MULTI:GPU.0,GPU.1", ONE_GPU),
        ("", ["CPU"]),
    ],
)
def test_devices_it_lacks(device: str, available: list[str]) -> None:
    with pytest.raises(ModelLoadError) as info:
        check_device(device, available)
    message = str(info.value)
    assert message.startswith(f"OPENVINO_DEVICE={device!r}: no such device here")
    assert f"This machine has {', '.join(available)}" in message
    assert "AUTO" in message


def test_a_missing_gpu_stops_the_load_before_any_conversion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def convert(*_: Any) -> None:
        raise AssertionError("converted although the device does not exist")

    monkeypatch.setattr(openvino, "_convert_in_child", convert)
    here = ov.Core().available_devices
    assert "GPU" not in {name.split(".")[0] for name in here}  # this test runs where there is no GPU
    with pytest.raises(ModelLoadError, match=rf"OPENVINO_DEVICE='GPU': .*This machine has {', '.join(here)}"):
        load_classifier("random", backend="openvino", cache_dir=tmp_path, device="GPU")
    assert not any(tmp_path.iterdir())


def test_a_failed_compile_is_a_model_load_error() -> None:
    class Core:
        def compile_model(self, model: Any, device: str, config: dict[str, Any]) -> Any:
            raise RuntimeError("Unsupported property INFERENCE_PRECISION_HINT: bf16")

    with pytest.raises(ModelLoadError) as info:
        openvino._compile(Core(), object(), "GPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "bf16"})
    assert str(info.value) == (
        "OpenVINO could not compile ResNet50 for OPENVINO_DEVICE=GPU (PERFORMANCE_HINT=LATENCY,"
        " INFERENCE_PRECISION_HINT=bf16): Unsupported property INFERENCE_PRECISION_HINT: bf16"
    )


def test_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENVINO_DEVICE", raising=False)
    assert load_settings().openvino_device == "CPU"
    monkeypatch.setenv("OPENVINO_DEVICE", "gpu.1")
    assert load_settings().openvino_device == "GPU.1"  # OpenVINO's names are in capitals
