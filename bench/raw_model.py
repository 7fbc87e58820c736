"""Raw model throughput: ResNet50 alone, no web app, no Redis. The reference the system benchmark is
compared against.

    python bench/raw_model.py [--backend tensorflow|openvino] [--precision f32|bf16] [--cache-dir DIR]
                              [--batches 1,2,4,8,16,32] [--seconds 5] [--weights random]
                              [--threads 0] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

# Runnable as a script from a checkout without `pip install -e .`: put the project root on the path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from app.settings import BACKENDS, OPENVINO_PRECISIONS
from app.worker.backends import load_classifier
from app.worker.classifier import Classifier
from bench.procs import exit_on_sigterm


@dataclass(frozen=True)
class Row:
    batch: int
    batches: int
    seconds: float
    images_per_s: float
    ms_per_batch: float
    ms_per_batch_p50: float
    ms_per_image: float
    cpu_ms_per_image: float  # the process's CPU (every thread's) over the timed runs, per image


def measure(classifier: Classifier, batch: int, seconds: float, warm: int = 2) -> Row:
    """Run `batch`-sized inferences for about `seconds` (at least 3 runs) after `warm` untimed ones."""
    pixels = np.random.default_rng(batch).integers(0, 256, size=(batch, 224, 224, 3), dtype=np.uint8)
    for _ in range(warm):  # first runs at a new shape set up oneDNN kernels: not steady state
        classifier.predict(pixels)
    times: list[float] = []
    started, cpu = time.perf_counter(), time.process_time()
    while len(times) < 3 or time.perf_counter() - started < seconds:
        t0 = time.perf_counter()
        classifier.predict(pixels)
        times.append(time.perf_counter() - t0)
    cpu = time.process_time() - cpu
    total = sum(times)
    return Row(
        batch=batch,
        batches=len(times),
        seconds=round(total, 3),
        images_per_s=round(batch * len(times) / total, 2),
        ms_per_batch=round(1000 * total / len(times), 2),
        ms_per_batch_p50=round(1000 * statistics.median(times), 2),
        ms_per_image=round(1000 * total / (batch * len(times)), 2),
        cpu_ms_per_image=round(1000 * cpu / (batch * len(times)), 3),
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="1,2,4,8,16,32", help="comma-separated batch sizes")
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring time per batch size")
    parser.add_argument("--weights", default="random", help="imagenet, random, or a weights file path")
    parser.add_argument("--threads", type=int, default=0, help="inference threads (0: the backend's default)")
    parser.add_argument("--backend", choices=BACKENDS, default="tensorflow", help="inference engine")
    parser.add_argument(
        "--precision",
        choices=[p for p in OPENVINO_PRECISIONS if p],
        default="",
        help="OpenVINO inference precision (default: OpenVINO's, bf16 where the CPU has it)",
    )
    parser.add_argument("--cache-dir", type=Path, help="OpenVINO's converted models (default: MODEL_CACHE_DIR)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    exit_on_sigterm()
    args = parse_args(argv)
    batches = [int(x) for x in args.batches.split(",") if x.strip()]
    started = time.perf_counter()
    classifier = load_classifier(
        args.weights, threads=args.threads, backend=args.backend, precision=args.precision, cache_dir=args.cache_dir
    )
    load_seconds = time.perf_counter() - started
    print(f"model {classifier.info.id} ({classifier.info.version}), loaded and warmed in {load_seconds:.1f} s")
    print(
        f"{'batch':>5} {'images/s':>9} {'ms/batch':>9} {'p50 ms':>8} {'ms/image':>9} {'CPU ms/image':>13} {'runs':>5}"
    )
    rows = []
    for batch in batches:
        row = measure(classifier, batch, args.seconds)
        rows.append(row)
        print(
            f"{row.batch:>5} {row.images_per_s:>9.1f} {row.ms_per_batch:>9.1f} "
            f"{row.ms_per_batch_p50:>8.1f} {row.ms_per_image:>9.1f} {row.cpu_ms_per_image:>13.2f} {row.batches:>5}",
            flush=True,
        )
    if args.json:
        report = {
            "model": {**asdict(classifier.info), "id": classifier.info.id},
            "backend": args.backend,
            "threads": args.threads,
            "cpus": os.cpu_count(),
            "seconds_per_batch_size": args.seconds,
            "load_seconds": round(load_seconds, 2),
            "results": [asdict(row) for row in rows],
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
