"""The OpenVINO backend: the TensorFlow backend's graph (preprocessing, model and top-5) converted by
OpenVINO once, kept on disk under MODEL_CACHE_DIR, and compiled for OPENVINO_DEVICE at every start (the
converted file is the same for every device). A worker
whose converted model is cached never loads TensorFlow (about 0.5 GB less memory, seconds less start-up).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from app.settings import model_id
from app.worker.classifier import MODEL_NAME, Classifier, ModelInfo, ModelLoadError
from app.worker.weights import build_model, weights_label

log = logging.getLogger(__name__)

# Part of the OpenVINO cache's name: bump it when the converted graph changes (app.worker.tensorflow.compile_graph).
OPENVINO_CACHE_FORMAT = 1
# A conversion's temporary directory older than this is left over from a crash: removed.
STALE_TEMP_SECONDS = 3600
# OpenVINO's devices that run on others: `AUTO`, `AUTO:GPU,CPU`, `MULTI:GPU,CPU`, `HETERO:GPU,CPU`, `BATCH:GPU(4)`.
VIRTUAL_DEVICES = ("AUTO", "MULTI", "HETERO", "BATCH")
# Those that pass the CPU's own properties on to it (DEVICE_PROPERTIES); BATCH refuses them.
PASSING_CPU_PROPERTIES = ("AUTO", "MULTI", "HETERO")


class OpenVINOClassifier(Classifier):
    """The converted graph compiled for its device: uint8 pixels in, the same top-5 out."""

    def __init__(self, compiled: Any, info: ModelInfo, cache_path: Path, cache_hit: bool, streams: int = 1) -> None:
        self.info = info
        self.cache_path = cache_path  # the converted model's .xml (its weights: the .bin beside it)
        self.cache_hit = cache_hit  # False: this start converted the model (and wrote the cache)
        self.streams = max(streams, 1)
        self._requests = [compiled.create_infer_request() for _ in range(self.streams)]  # one per stream

    def _top5(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The batch split between the streams, each part inferred at once by its own request."""
        parts = np.array_split(np.ascontiguousarray(pixels), min(len(self._requests), max(len(pixels), 1)))
        requests, started = self._requests[: len(parts)], []
        try:
            for request, part in zip(requests, parts, strict=True):
                request.start_async({0: part}, share_inputs=True)  # shared: no copy of the batch
                started.append(request)
        finally:  # every part started is waited for, even if another failed: none runs on into the next batch
            for request in started:
                request.wait()
        # The outputs of compile_graph (values, then indices), copied out of the requests' buffers.
        values, indices = (np.concatenate([r.get_output_tensor(i).data for r in requests]) for i in (0, 1))
        return values, indices


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
    """Build the Keras model, convert `compile_graph(model)` (uint8 pixels in, top-5 out) and save it as
    `xml`, atomically: written to a temporary directory beside its own, then renamed into place, so a
    crash leaves no half-written model. Runs in a child process (TensorFlow's memory goes with it)."""
    import openvino as ov

    from app.worker.tensorflow import compile_graph

    model, _ = build_model(weights)
    converted = ov.convert_model(compile_graph(model))
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
    root = Path(__file__).resolve().parents[2]  # the project: `-c` puts the working directory on the path
    code = "import sys; from app.worker.openvino import _convert_main; _convert_main(sys.argv[1], sys.argv[2])"
    if weights not in {"imagenet", "random"}:
        weights = str(Path(weights).resolve())
    done = subprocess.run(
        [sys.executable, "-c", code, weights, str(xml.resolve())], cwd=root, capture_output=True, text=True, check=False
    )
    if done.returncode == 2 and done.stdout.strip():
        raise ModelLoadError(done.stdout.strip().splitlines()[-1])
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-20:])
        raise ModelLoadError(f"converting ResNet50 for OpenVINO failed (exit status {done.returncode}):\n{tail}")


def check_device(device: str, available: list[str]) -> None:
    """A ModelLoadError naming this machine's devices (`available`, OpenVINO's `Core().available_devices`,
    e.g. ["CPU", "GPU.0", "GPU.1"]) unless `device` names only devices among them: `GPU` is the first GPU."""
    kind, _, listed = device.partition(":")
    if kind in VIRTUAL_DEVICES:  # what it runs on, if listed ("-CPU": all but the CPU)
        wanted = [name.lstrip("-").split("(")[0] for name in listed.split(",") if name]
    else:
        wanted = [device]
    known = {*available, *(name.split(".")[0] for name in available), *(f"{name}.0" for name in available)}
    missing = [name for name in wanted if name not in known]
    if not device or missing:
        raise ModelLoadError(
            f"OPENVINO_DEVICE={device!r}: no such device here. This machine has {', '.join(available) or 'none'};"
            f" or use AUTO (OpenVINO picks), or one of {', '.join(VIRTUAL_DEVICES)} followed by :DEVICE,DEVICE"
        )


def _compile(core: Any, model: Any, device: str, config: dict[str, Any]) -> Any:
    try:
        return core.compile_model(model, device, config)
    except RuntimeError as exc:
        settings = ", ".join(f"{key}={value}" for key, value in config.items())
        raise ModelLoadError(
            f"OpenVINO could not compile ResNet50 for OPENVINO_DEVICE={device} ({settings}): {exc}"
        ) from exc


def _execution_devices(compiled: Any) -> str:
    try:
        return ", ".join(compiled.get_property("EXECUTION_DEVICES"))
    except RuntimeError:
        return "?"


def _resolved_precision(compiled: Any) -> str:
    """The precision OpenVINO chose, e.g. "bf16" (a virtual device such as AUTO may not say)."""
    try:
        return str(compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name())
    except RuntimeError:
        return "auto"


def load_openvino(
    weights: str, threads: int, precision: str, cache_dir: Path, device: str = "CPU"
) -> OpenVINOClassifier:
    try:
        import openvino as ov
    except ImportError as exc:
        raise ModelLoadError(
            f"INFERENCE_BACKEND=openvino needs the openvino package ({exc}): pip install -e '.[worker]'"
        ) from exc

    label = weights_label(weights)
    xml = openvino_cache_path(weights, cache_dir)
    core = ov.Core()
    check_device(device, list(core.available_devices))
    # On the CPU, THROUGHPUT: streams of a thread or a few each (OpenVINO's choice), between which each batch is
    # split (OpenVINOClassifier._top5). One stream of every thread waits for its slowest thread at each layer,
    # so work beside the worker (the web side, unpinned) slowed it more than the cores it took: with half a
    # core busy beside it, 119 images/s against 146 for two streams on an Intel Xeon with AMX, 2 cores (189
    # and 199 with the cores to itself; measured). Elsewhere LATENCY: one stream, one request.
    config: dict[str, Any] = {"PERFORMANCE_HINT": "THROUGHPUT" if device == "CPU" else "LATENCY"}
    if precision:
        config["INFERENCE_PRECISION_HINT"] = precision
    # OpenVINO pins its threads to the first cores of the process's affinity, the same ones in every process:
    # two workers of one thread each would share one core. The kernel places them instead.
    cpu: dict[str, Any] = {"ENABLE_CPU_PINNING": False} | ({"INFERENCE_NUM_THREADS": threads} if threads > 0 else {})
    if device == "CPU":  # the CPU's properties: other devices refuse them
        config |= cpu
    elif device.split(":")[0] in PASSING_CPU_PROPERTIES:  # one that may run on the CPU takes them for it
        config["DEVICE_PROPERTIES"] = {"CPU": cpu}

    model = None
    cache_hit = xml.is_file() and xml.with_suffix(".bin").is_file()
    if cache_hit:
        try:
            model = core.read_model(xml)
        except RuntimeError as exc:  # a damaged file: convert again
            log.warning("cached OpenVINO model %s is unreadable (%s): converting again", xml.parent, exc)
            shutil.rmtree(xml.parent, ignore_errors=True)
            cache_hit = False
    if model is None:
        _remove_stale_temps(cache_dir)
        log.info("converting ResNet50 (%s weights) for OpenVINO into %s", label, xml.parent)
        started = time.perf_counter()
        _convert_in_child(weights, xml)
        log.info("converted in %.1f s", time.perf_counter() - started)
        model = core.read_model(xml)
    compiled = _compile(core, model, device, config)
    resolved = _resolved_precision(compiled)
    log.info("OpenVINO runs ResNet50 on %s (OPENVINO_DEVICE=%s) in %s", _execution_devices(compiled), device, resolved)
    # The device in the version when it is not the CPU: "openvino-2026.4.1-gpu-f16".
    on = "" if device == "CPU" else re.sub(r"[^a-z0-9.]+", "-", device.lower()) + "-"
    info = ModelInfo(
        name=MODEL_NAME,
        version=f"openvino-{_short_version(ov.get_version())}-{on}{resolved}",
        weights=label,
        backend="openvino",
    )
    streams = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")) if device == "CPU" else 1
    log.info("OpenVINO infers each batch in %d part(s) at once, one per stream", streams)
    return OpenVINOClassifier(compiled, info, cache_path=xml, cache_hit=cache_hit, streams=streams)
