"""Do the inference backends give the same answers? Runs TensorFlow and OpenVINO (at f32 and at
OpenVINO's default precision, bf16 where the CPU has it) on the same deterministic images and compares
their top-5 results with TensorFlow's.

    python bench/agreement.py [--images 64] [--weights random] [--batch 16] [--cache-dir DIR]
                              [--json out.json]

The images are generated (gradients, stripes, checkerboards, rings, blobs, smoothed and plain noise)
from a fixed seed, so every run compares the same inputs. Reported per OpenVINO precision:

- top-1 agreement: the share of images whose most probable class is the same as TensorFlow's;
- top-5 overlap: the mean share of TensorFlow's 5 classes also among OpenVINO's 5;
- largest probability difference: the largest |p_tf - p_ov| over every class that is in both top-5s;
- the same for the top-1 probability, and TensorFlow's top-1 margin (p1 - p2) on any image where
  the top-1 differs (a disagreement on a near tie is rounding, not a different model);
- whether it passes the rule INFERENCE_BACKEND=auto applies at a worker's start (app/worker/agreement.py),
  which compares the first 28 of these same images.

With MODEL_WEIGHTS=random (untrained) the classes mean nothing; the comparison of the two engines'
arithmetic still holds. The count of distinct top-1 classes says how varied the answers were.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

# Runnable as a script from a checkout without `pip install -e .`: put the project root on the path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.worker.agreement import PROBE_SEED, compare, disagreement, predict_all, probe_images
from app.worker.backends import load_classifier
from bench.procs import exit_on_sigterm


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64, help="how many generated images")
    parser.add_argument("--weights", default="random", help="imagenet, random, or a weights file path")
    parser.add_argument("--batch", type=int, default=16, help="images per inference")
    parser.add_argument("--threads", type=int, default=0, help="inference threads (0: the backend's default)")
    parser.add_argument("--cache-dir", type=Path, help="OpenVINO's converted models (default: MODEL_CACHE_DIR)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    exit_on_sigterm()
    args = parse_args(argv)
    images = probe_images(args.images)
    tensorflow = load_classifier(args.weights, threads=args.threads, warmup_sizes=())
    reference = predict_all(tensorflow, images, args.batch)
    top1 = [top[0] for top in reference]
    print(
        f"{tensorflow.info.id}: {args.images} images; TensorFlow ({tensorflow.info.version}) top-1: "
        f"{len({i for i, _ in top1})} distinct classes, probability median {statistics.median(p for _, p in top1):.3f}"
        f" (min {min(p for _, p in top1):.3f})"
    )
    rows = []
    for precision in ("f32", ""):
        started = time.perf_counter()
        openvino = load_classifier(
            args.weights,
            threads=args.threads,
            warmup_sizes=(),
            backend="openvino",
            precision=precision,
            cache_dir=args.cache_dir,
        )
        rows.append(compare(openvino.info.version, reference, predict_all(openvino, images, args.batch)))
        print(f"  loaded {openvino.info.version} in {time.perf_counter() - started:.1f} s", flush=True)
    print(
        f"{'engine (vs TensorFlow)':<26} {'top-1 agree':>11} {'top-5 overlap':>13} {'max |dp|':>9} "
        f"{'max |dp1|':>9} {'mean |dp1|':>10} {'differ':>6} {'max margin':>10}"
    )
    for row in rows:
        print(
            f"{row.engine:<26} {row.top1_agreement:>11.1%} {row.top5_overlap:>13.1%} {row.max_prob_diff:>9.2e} "
            f"{row.max_top1_prob_diff:>9.2e} {row.mean_top1_prob_diff:>10.2e} {row.disagreements:>6} "
            f"{row.max_margin_where_disagreeing:>10.2e}  auto: {disagreement(row) or 'agrees'}"
        )
    if args.json:
        report = {
            "model": tensorflow.info.id,
            "reference": tensorflow.info.version,
            "images": args.images,
            "seed": PROBE_SEED,
            "distinct_top1_classes": len({i for i, _ in top1}),
            "results": [{**asdict(row), "auto_verdict": disagreement(row) or "agrees"} for row in rows],
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
