"""The cache of INFERENCE_BACKEND=auto's decisions: a JSON file in MODEL_CACHE_DIR per key, the key being
everything the decision depends on (the model, the libraries' versions, the engines' settings, the threads
and cores, the CPU's flags). A file missing, unreadable or of another key: the worker probes again, and
writes it anew.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from app.settings import Settings
from app.worker.choice import Choice, timing_batch

log = logging.getLogger(__name__)

# Part of the key: bump it when the probe, its rule or the file's shape changes (earlier decisions then
# no longer apply).
CHOICE_FORMAT = 1
# A decision's file is a few kilobytes: a larger one is not ours, and is not worth reading.
MAX_CACHE_BYTES = 1 << 20
# Checks the stored decision's types: valid JSON of the wrong types is as unreadable as a damaged file.
_CHOICE = TypeAdapter(Choice)


def installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def _version(*distributions: str) -> str:
    """The installed version of the first of `distributions` present ("" for none), without importing it:
    a worker whose decision is cached must not pay for importing TensorFlow."""
    for name in distributions:
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return ""


def _cpu_flags() -> str:
    """A digest of the CPU's feature flags: they decide what the engines can use (AVX-512, bf16, AMX)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line for line in cpuinfo if line.startswith("flags")), "")
    except OSError:  # not Linux
        flags = ""
    return hashlib.sha256((flags or f"{platform.machine()} {platform.processor()}").encode()).hexdigest()[:16]


def _weights(weights: str) -> str:
    """A weights file's size and modification time: a file replaced under the same name is probed again."""
    if weights in {"imagenet", "random"}:
        return weights
    try:
        stat = Path(weights).stat()
    except OSError:
        return weights  # loading it will fail, and say why
    return f"{weights}:{stat.st_size}:{stat.st_mtime_ns}"


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cache_key(settings: Settings) -> dict[str, Any]:
    return {
        "format": CHOICE_FORMAT,
        "model": settings.model_id,
        "weights": _weights(settings.model_weights),
        "tensorflow": _version("tensorflow", "tensorflow-cpu"),
        "keras": _version("keras"),
        "openvino": _version("openvino"),
        "openvino_precision": settings.openvino_precision,
        "threads": settings.model_threads,
        "cores": _cores(),
        "cpu_flags": _cpu_flags(),
        "openvino_device": settings.openvino_device,
        "mixed_precision": settings.mixed_precision,
        "batch": timing_batch(settings.max_batch),
    }


def cache_path(settings: Settings, key: dict[str, Any] | None = None) -> Path:
    text = json.dumps(key or cache_key(settings), sort_keys=True)
    return settings.model_cache_dir / f"backend-choice-{hashlib.sha256(text.encode()).hexdigest()[:16]}.json"


def _parse(data: dict[str, Any]) -> Choice:
    choice = _CHOICE.validate_python({**data, "cached": True})
    if choice.backend not in {"tensorflow", "openvino"}:
        raise ValueError(f"unknown backend {choice.backend!r}")
    choice.summary  # noqa: B018 - the worker logs it at once: a measured_at out of range must fail here
    return choice


def read(settings: Settings) -> Choice | None:
    """The cached decision for these settings on this machine, or None (then probe)."""
    key = cache_key(settings)
    path = cache_path(settings, key)
    try:
        if path.stat().st_size > MAX_CACHE_BYTES:
            raise ValueError(f"larger than {MAX_CACHE_BYTES} bytes")
        stored = json.loads(path.read_text())
        return _parse(stored["choice"]) if stored["key"] == key else None
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, OverflowError, RecursionError) as exc:
        log.warning("unreadable backend choice %s (%r): probing again", path, exc)
        return None


def write(settings: Settings, choice: Choice) -> None:
    """Atomically (a temporary file renamed): a worker reading it never sees half a file. A directory it
    cannot write costs the next start a probe, not this one its start."""
    key = cache_key(settings)
    path = cache_path(settings, key)
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temp.write_text(json.dumps({"key": key, "choice": asdict(replace(choice, cached=False))}, indent=2) + "\n")
        os.replace(temp, path)
    except OSError as exc:
        log.warning("could not cache the backend choice in %s (%s): the next start probes again", path, exc)


@contextmanager
def exclusive(settings: Settings) -> Iterator[None]:
    """One probe at a time on this machine: workers starting together would otherwise time their candidates
    against each other, and all probe; the later ones find the first one's decision instead."""
    path = cache_path(settings).with_suffix(".lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = path.open("w")
    except OSError as exc:  # a directory it cannot write: probe all the same
        log.warning("could not lock %s (%s): probing without the lock", path, exc)
        yield
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        yield
