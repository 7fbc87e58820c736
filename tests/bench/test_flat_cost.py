"""bench/flat_cost.py: the judgement of its samples (flat or not, the rate, Redis), and one small run end to end."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from bench.flat_cost import archive, database_bytes, raised_limits
from bench.flat_figures import SECTION, Figures, Sample, flatness, limits, reference_images, report

ROOT = Path(__file__).resolve().parents[2]
MB = 2**20


def curve(web_mb: Sequence[float], redis_mb: Sequence[float] | None = None, step: int = 100) -> list[Sample]:
    """One sample before the collection, then one per value, `step` more images processed each time."""
    redis_mb = redis_mb or [10.0] * len(web_mb)
    before = Sample(-1.0, 0, 90 * 1024, 150 * 1024, MB, 8 * MB)
    return [before] + [
        Sample(10.0 * i, step * (i + 1), int(web * 1024), 150 * 1024, int(redis * MB), (8 + i) * MB)
        for i, (web, redis) in enumerate(zip(web_mb, redis_mb, strict=True))
    ]


def checks_of(samples: list[Sample], reference: int = 100) -> dict[str, bool]:
    return {c.curve: c.ok for c in flatness(samples, reference)}


def test_a_flat_curve_passes() -> None:
    checks = checks_of(curve([100, 101, 104, 99, 110, 102, 103]))
    assert checks == {"web process, resident": True, "decode processes, resident": True, "Redis used_memory": True}


def test_a_curve_growing_with_the_work_fails() -> None:
    checks = checks_of(curve([100 + 10 * i for i in range(20)]))
    assert checks["web process, resident"] is False
    assert checks["Redis used_memory"] is True


def test_a_late_rise_past_the_share_fails_and_one_within_it_passes() -> None:
    assert checks_of(curve([100, 100, 100, 100, 121]))["web process, resident"] is False
    assert checks_of(curve([100, 100, 100, 100, 119]))["web process, resident"] is True


def test_the_level_is_the_highest_of_the_reference_window_so_a_sawing_curve_is_flat() -> None:
    # Redis's stream fills and empties between batches: one sample caught low is not the level.
    sawing = [5, 10, 6, 10, 5, 10, 6, 10]
    (redis,) = [c for c in flatness(curve([100] * 8, sawing), 100) if c.curve == "Redis used_memory"]
    assert (redis.level, redis.peak, redis.lowest, redis.ok) == (10, 10, 5, True)
    # But a curve that doubles once the window is over is growth.
    assert checks_of(curve([100] * 6, [5, 5, 5, 10, 10, 10]))["Redis used_memory"] is False


def test_the_level_is_the_highest_of_three_samples_at_least() -> None:
    # Sampled far apart (1,000 images between samples, a reference of 100): the window holds one sample.
    samples = curve([100] * 4, [5, 10, 6, 10], step=1_000)
    assert checks_of(samples)["Redis used_memory"] is True
    assert checks_of(curve([100] * 5, [5, 5, 5, 5, 10], step=1_000))["Redis used_memory"] is False


def test_the_level_is_taken_only_once_the_reference_images_are_done() -> None:
    # The early spike (before 200 images, with a reference of 200) sets no level: the later growth fails.
    samples = curve([300, 100, 100, 100, 130])
    assert checks_of(samples, reference=200)["web process, resident"] is False


def test_no_sample_past_the_reference_judges_nothing_and_is_not_flat() -> None:
    samples = curve([100, 100])
    assert flatness(samples, reference=1_000) == []
    figures = Figures(20_000, {}, saturation=10.0, done_s=100.0, samples=samples)
    assert figures.verdicts()["flat"] is False


def test_the_reference_is_1000_images_or_a_twentieth_of_a_smaller_run() -> None:
    assert [reference_images(n) for n in (20_000, 50_000, 2_000, 150, 5)] == [1_000, 1_000, 100, 7, 1]


def figures(rate: float, saturation: float, redis_mb: float) -> Figures:
    setup = {"backend": "stand-in", "workers": 1, "pinned": False, "every": 1.0, "database": "SQLite"}
    samples = curve([100] * 30, [redis_mb] * 30)
    progress = {"done": 2_000, "failed": 0, "queued": 0}
    setup["settings"] = raised_limits(2_000, 10 * MB)
    return Figures(2_000, setup, saturation, "given", 10 * MB, 1.0, 2_000 / rate, progress, samples)


def test_the_verdicts_the_rate_the_flat_curves_and_redis() -> None:
    assert figures(rate=46, saturation=50, redis_mb=12).verdicts() == {"rate": True, "flat": True, "redis": True}
    assert figures(rate=44, saturation=50, redis_mb=12).verdicts()["rate"] is False  # 0.88 of it
    assert figures(rate=46, saturation=50, redis_mb=50).verdicts()["redis"] is False
    assert figures(rate=46, saturation=0, redis_mb=12).verdicts()["rate"] is False  # nothing to compare with


def test_the_report_says_what_was_missed() -> None:
    text = report(figures(rate=30, saturation=50, redis_mb=60), "2 cores", "`test`")
    assert text.startswith(SECTION + "\n")
    assert "(**missed**: 0.60)" in text
    assert "Redis under 50 MB (**missed**: at most 60.0 MB)" in text
    assert "memory flat (met;" in text
    assert "![Memory and database size against images done](flat_cost.png)" in text


def test_the_report_gives_each_rate_against_the_bare_model_at_its_end_of_the_run() -> None:
    measured = figures(rate=30, saturation=40, redis_mb=12)
    assert "The bare model" not in report(measured, "2 cores", "`test`")  # the stand-in has none
    measured.bare = [50.0, 32.0]  # the machine slowed down between the two
    text = report(measured, "2 cores", "`test`")
    assert "measured 50.0 images/s just before the saturation row and 32.0 just after the collection" in text
    assert "the saturation row ran at 80% of the first, the collection at 94% of the second" in text


def test_the_limits_are_raised_only_as_far_as_the_collection_needs() -> None:
    assert raised_limits(20_000, 440 * MB) == {
        "MAX_COLLECTION_FILES": "20000",
        "MAX_COLLECTION_BYTES": str(512 * MB),
        "QUOTA_IMAGES_PER_DAY": "20000",
        "QUOTA_STORED_BYTES": str(2048 * MB),
    }
    bigger = raised_limits(30_000, 1200 * MB)
    assert (bigger["MAX_COLLECTION_BYTES"], bigger["QUOTA_STORED_BYTES"]) == (str(1200 * MB), str(2400 * MB))
    assert raised_limits(500, MB)["MAX_COLLECTION_FILES"] == "10000"  # the default, not lowered


def test_the_report_names_the_settings_raised_and_their_defaults() -> None:
    text = limits(raised_limits(20_000, 440 * MB))
    assert text.startswith("`MAX_COLLECTION_FILES=20000` (default 10000), `MAX_COLLECTION_BYTES=536870912`, ")


def test_the_archive_holds_distinct_jpegs() -> None:
    with zipfile.ZipFile(io.BytesIO(archive(1_200, salt=1 << 62, size=(32, 32)))) as packed:
        names = packed.namelist()
        contents = [packed.read(name) for name in names]
    assert names[0] == "photos/00000.jpg" and names[-1] == "photos/01199.jpg"
    assert len(set(contents)) == 1_200  # across the chunks made by several processes too
    assert all(data.startswith(b"\xff\xd8") for data in contents)


def test_the_size_of_a_sqlite_database_counts_its_wal(tmp_path: Path) -> None:
    (tmp_path / "bench.sqlite3").write_bytes(b"x" * 4096)
    assert asyncio.run(database_bytes(f"sqlite://{tmp_path / 'bench.sqlite3'}")) == 4096
    (tmp_path / "bench.sqlite3-wal").write_bytes(b"x" * 1000)
    assert asyncio.run(database_bytes(f"sqlite://{tmp_path / 'bench.sqlite3'}")) == 5096


def test_a_small_run_end_to_end(tmp_path: Path) -> None:
    """150 images through the whole system (the stand-in model), sampled every second, after a short Locust
    saturation row; its section, plot and samples written to a documents folder of its own."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "benchmarks.md").write_text("# Benchmarks\n\nKept.\n\n## Raw model\n\nKept too.\n")
    command = [sys.executable, str(ROOT / "bench/flat_cost.py"), "--images", "150", "--every", "1"]
    command += ["--backend", "stand-in", "--unpinned", "--saturation-users", "5", "--saturation-seconds", "5"]
    command += ["--docs", str(docs), "--limit", "180"]
    done = subprocess.run(command, cwd=ROOT, env=os.environ, capture_output=True, text=True, timeout=420)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    found = json.loads((docs / "benchmarks.json").read_text())["flat_cost"]
    samples = [Sample(**s) for s in found["samples"]]
    assert len(samples) >= 2 and samples[0].at < 0 <= samples[1].at
    assert samples[-1].processed == 150 == found["progress"]["done"]
    assert all(s.web_kb > 0 and s.redis_bytes > 0 and s.database_bytes > 0 for s in samples)
    assert found["reference"] == 7
    # The verdict is the one the samples give.
    assert found["flatness"] == [asdict(c) for c in flatness(samples, 7)]
    figures = Figures(**{k: found[k] for k in ("images", "setup", "saturation", "done_s")}, samples=samples)
    assert found["verdicts"] == figures.verdicts()
    assert found["saturation"] > 0 and found["rate"] == 150 / found["done_s"]

    text = (docs / "benchmarks.md").read_text()
    assert text.startswith("# Benchmarks\n\nKept.\n\n## Raw model\n\nKept too.\n\n" + SECTION + "\n")
    assert "| 150 (150 done, 0 failed) |" in text
    assert (docs / "flat_cost.png").read_bytes().startswith(b"\x89PNG")
