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
  the top-1 differs (a disagreement on a near tie is rounding, not a different model).

With MODEL_WEIGHTS=random (untrained) the classes mean nothing; the comparison of the two engines'
arithmetic still holds. The count of distinct top-1 classes says how varied the answers were.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

# Runnable as a script from a checkout without `pip install -e .`: put the project root on the path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from app.worker.backends import load_classifier
from app.worker.classifier import IMAGE_SIZE, Classifier

Top5 = list[tuple[int, float]]
SEED = 20240605


def pattern_images(count: int, seed: int = SEED) -> np.ndarray:
    """`count` deterministic uint8 (count, 224, 224, 3) images of varied kinds, from `seed`."""
    rng = np.random.default_rng(seed)
    size = IMAGE_SIZE
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    images = np.empty((count, size, size, 3), np.uint8)
    for n in range(count):
        kind = n % 7
        colors = rng.uniform(0, 255, size=(2, 3)).astype(np.float32)
        if kind == 0:  # linear gradient between two colours at a random angle
            angle = rng.uniform(0, 2 * np.pi)
            t = (np.cos(angle) * x + np.sin(angle) * y - min(0, np.cos(angle)) - min(0, np.sin(angle))) / (
                abs(np.cos(angle)) + abs(np.sin(angle))
            )
        elif kind == 1:  # stripes
            t = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 20) * (x if n % 2 else y) + rng.uniform(0, 6))
        elif kind == 2:  # checkerboard
            cells = int(rng.integers(2, 16))
            t = ((np.floor(x * cells) + np.floor(y * cells)) % 2).astype(np.float32)
        elif kind == 3:  # concentric rings around a random centre
            cx, cy = rng.uniform(0.2, 0.8, size=2)
            t = 0.5 + 0.5 * np.cos(2 * np.pi * rng.uniform(3, 12) * np.hypot(x - cx, y - cy))
        elif kind == 4:  # a few soft blobs
            t = np.zeros_like(x)
            for _ in range(int(rng.integers(2, 6))):
                cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.3)
                t += np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))
            t = np.clip(t, 0, 1)
        elif kind == 5:  # smoothed noise: 8x8 noise upsampled
            coarse = rng.uniform(0, 1, size=(8, 8)).astype(np.float32)
            t = np.kron(coarse, np.ones((size // 8, size // 8), np.float32))
        else:  # plain per-pixel noise, per channel
            images[n] = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
            continue
        pixels = colors[0] + t[..., None] * (colors[1] - colors[0])
        images[n] = np.clip(pixels + rng.normal(0, 4, size=pixels.shape), 0, 255).astype(np.uint8)
    return images


def run(classifier: Classifier, images: np.ndarray, batch: int) -> list[Top5]:
    results: list[Top5] = []
    for start in range(0, len(images), batch):
        results.extend(classifier.predict(images[start : start + batch]))
    return results


@dataclass(frozen=True)
class Agreement:
    engine: str
    images: int
    top1_agreement: float
    top5_overlap: float
    max_prob_diff: float
    max_top1_prob_diff: float
    mean_top1_prob_diff: float
    disagreements: int
    max_margin_where_disagreeing: float  # TensorFlow's p1 - p2 on the images where top-1 differs


def compare(engine: str, reference: list[Top5], other: list[Top5]) -> Agreement:
    top1_same, overlaps, prob_diffs, top1_diffs, margins = 0, [], [0.0], [], []
    for ref, got in zip(reference, other, strict=True):
        p_ref, p_got = dict(ref), dict(got)
        if ref[0][0] == got[0][0]:
            top1_same += 1
            top1_diffs.append(abs(ref[0][1] - got[0][1]))
        else:
            margins.append(ref[0][1] - ref[1][1])
        overlaps.append(len(p_ref.keys() & p_got.keys()) / len(ref))
        prob_diffs.extend(abs(p_ref[i] - p_got[i]) for i in p_ref.keys() & p_got.keys())
    return Agreement(
        engine=engine,
        images=len(reference),
        top1_agreement=top1_same / len(reference),
        top5_overlap=statistics.fmean(overlaps),
        max_prob_diff=max(prob_diffs),
        max_top1_prob_diff=max(top1_diffs, default=0.0),
        mean_top1_prob_diff=statistics.fmean(top1_diffs) if top1_diffs else 0.0,
        disagreements=len(margins),
        max_margin_where_disagreeing=max(margins, default=0.0),
    )


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
    args = parse_args(argv)
    images = pattern_images(args.images)
    tensorflow = load_classifier(args.weights, threads=args.threads, warmup_sizes=())
    reference = run(tensorflow, images, args.batch)
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
        rows.append(compare(openvino.info.version, reference, run(openvino, images, args.batch)))
        print(f"  loaded {openvino.info.version} in {time.perf_counter() - started:.1f} s", flush=True)
    print(
        f"{'engine (vs TensorFlow)':<26} {'top-1 agree':>11} {'top-5 overlap':>13} {'max |dp|':>9} "
        f"{'max |dp1|':>9} {'mean |dp1|':>10} {'differ':>6} {'max margin':>10}"
    )
    for row in rows:
        print(
            f"{row.engine:<26} {row.top1_agreement:>11.1%} {row.top5_overlap:>13.1%} {row.max_prob_diff:>9.2e} "
            f"{row.max_top1_prob_diff:>9.2e} {row.mean_top1_prob_diff:>10.2e} {row.disagreements:>6} "
            f"{row.max_margin_where_disagreeing:>10.2e}"
        )
    if args.json:
        report = {
            "model": tensorflow.info.id,
            "reference": tensorflow.info.version,
            "images": args.images,
            "seed": SEED,
            "distinct_top1_classes": len({i for i, _ in top1}),
            "results": [asdict(row) for row in rows],
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
