"""The figures of bench/flat_cost.py, and what is judged from them: the samples, whether the memory curves
stayed flat, the section of docs/benchmarks.md and the plot. Pure: nothing here starts or asks a system."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from app.settings import Settings
from bench.run import MAX_BATCH

SECTION = "## Cost flat as work grows"
REFERENCE_IMAGES = 1_000  # the curves' level is taken after this many images (a twentieth of a smaller run)
FLAT_SHARE = 0.2  # each memory curve's highest within this share above its level
LEVEL_SAMPLES = 3  # the level is the highest of at least this many samples (see `flatness`)
REDIS_TARGET_MB = 50
RATE_TARGET = 0.9  # of the single-upload saturation rate


@dataclass(frozen=True)
class Sample:
    at: float  # seconds since the 202 (negative: before the collection was sent)
    processed: int  # the collection's images done or failed, through the API
    web_kb: int  # the web process, resident
    decoders_kb: int  # its decode processes together, resident
    redis_bytes: int  # INFO memory used_memory
    database_bytes: int  # pg_database_size, or the SQLite file and its WAL


@dataclass(frozen=True)
class Flatness:
    curve: str
    level: float  # once the reference number of images is processed (see `flatness`)
    peak: float  # the highest from there on
    lowest: float
    ok: bool  # peak <= (1 + FLAT_SHARE) * level: growth is what is judged, a fall is not a cost


CURVES: dict[str, Callable[[Sample], float]] = {
    "web process, resident": lambda s: s.web_kb / 1024,
    "decode processes, resident": lambda s: s.decoders_kb / 1024,
    "Redis used_memory": lambda s: s.redis_bytes / 2**20,
}


def reference_images(images: int) -> int:
    return min(REFERENCE_IMAGES, max(1, images // 20))


def flatness(samples: list[Sample], reference: int, share: float = FLAT_SHARE) -> list[Flatness]:
    """Each memory curve once `reference` images are processed: its level then, its highest and lowest from
    then on, and whether the highest stays within `share` above the level. The level is the highest of the
    samples while the next `reference` images are processed (from the first sample at `reference` to the
    first at twice that, and at least LEVEL_SAMPLES), not one sample: Redis's curve saws as the stream fills
    and empties between batches, and one sample caught low would make the steady level look like growth.
    Empty when no sample got that far (then nothing is judged flat)."""
    after = [s for s in samples if s.at >= 0 and s.processed >= reference]
    if not after:
        return []
    ends = next((i for i, s in enumerate(after) if s.processed >= 2 * reference), len(after) - 1)
    ends = max(ends, LEVEL_SAMPLES - 1)
    checks = []
    for name, value in CURVES.items():
        values = [value(s) for s in after]
        level, peak = max(values[: ends + 1]), max(values)
        checks.append(Flatness(name, level, peak, min(values), peak <= (1 + share) * level))
    return checks


def redis_peak_mb(samples: list[Sample]) -> float:
    return max((s.redis_bytes for s in samples), default=0) / 2**20


@dataclass
class Figures:
    images: int
    setup: dict[str, Any]  # backend, workers, pinned, database, every, the settings raised
    saturation: float = 0.0  # single-upload predictions/s
    saturation_source: str = ""
    archive_bytes: int = 0
    answered_s: float = 0.0  # sending the archive until its 202
    done_s: float | None = None  # from the 202 until the collection was done
    progress: dict[str, int] = field(default_factory=dict)  # the collection's, at the end
    samples: list[Sample] = field(default_factory=list)  # the first one before the collection was sent
    # The bare model at MAX_BATCH on the workers' cores, just before the saturation row and just after the
    # collection: how fast the machine ran at either end (it drifts by tens of per cent over minutes).
    bare: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.images / self.done_s if self.done_s else 0.0

    @property
    def reference(self) -> int:
        return reference_images(self.images)

    def verdicts(self) -> dict[str, bool]:
        checks = flatness(self.samples, self.reference)
        return {
            "rate": bool(self.saturation) and self.rate >= RATE_TARGET * self.saturation,
            "flat": bool(checks) and all(c.ok for c in checks),
            "redis": redis_peak_mb(self.samples) < REDIS_TARGET_MB,
        }

    def as_json(self) -> dict[str, Any]:
        checks = [asdict(c) for c in flatness(self.samples, self.reference)]
        return (
            asdict(self)
            | {"rate": self.rate, "reference": self.reference, "flatness": checks}
            | {"verdicts": self.verdicts()}
        )


# ---- the report ----------------------------------------------------------------------------------------


def met(ok: bool) -> str:
    return "met" if ok else "**missed**"


def rise(check: Flatness) -> str:
    """How far the curve's highest is above its level."""
    return f"{100 * (check.peak / check.level - 1):+.0f}%" if check.level else "-"


def flatness_rows(figures: Figures) -> list[str]:
    checks = flatness(figures.samples, figures.reference)
    if not checks:
        return [f"No sample after the first {figures.reference:,} images: the curves are not judged (**missed**)."]
    before, last = figures.samples[0], figures.samples[-1]
    lines = [
        f"| memory (MB) | before the collection | level after {figures.reference:,} images | highest after | "
        f"lowest after | at the end | highest within {FLAT_SHARE:.0%} of the level |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for c in checks:
        value = CURVES[c.curve]
        lines.append(
            f"| {c.curve} | {value(before):.1f} | {c.level:.1f} | **{c.peak:.1f}** ({rise(c)}) | {c.lowest:.1f} "
            f"| {value(last):.1f} | {met(c.ok)} |"
        )
    return lines


def limits(settings: dict[str, str]) -> str:
    """`NAME=value` for each, and its default where it was raised."""
    defaults = Settings()
    return ", ".join(
        f"`{name}={value}`"
        + ("" if str(default := getattr(defaults, name.lower())) == value else f" (default {default})")
        for name, value in settings.items()
    )


def bare_model_lines(figures: Figures) -> list[str]:
    """What the bare model measured at either end of the run, and each rate against it."""
    if len(figures.bare) != 2 or not all(figures.bare):
        return []
    first, last = figures.bare
    return [
        f"The bare model ({figures.setup['backend']} at batch {MAX_BATCH}, on the workers' cores, "
        f"`bench/raw_model.py`) measured {first:.1f} images/s just before the saturation row and {last:.1f} just "
        f"after the collection: the saturation row ran at {figures.saturation / first:.0%} of the first, the "
        f"collection at {figures.rate / last:.0%} of the second.",
        "",
    ]


def report(figures: Figures, machine: str, command: str) -> str:
    setup, verdicts = figures.setup, figures.verdicts()
    before, last = figures.samples[0], figures.samples[-1]
    done, failed = figures.progress.get("done", 0), figures.progress.get("failed", 0)
    ended = f"{figures.done_s:.1f} s" if figures.done_s else "**not done** by the deadline"
    ratio = figures.rate / figures.saturation if figures.saturation else 0.0
    workers = f"{setup['workers']} worker{'s' if setup['workers'] > 1 else ''}"
    where = (
        "pinned as the saturation rows are: workers on core 0, the rest on core 1"
        if setup["pinned"]
        else "nothing pinned"
    )
    growth = (last.database_bytes - before.database_bytes) / max(1, done + failed)
    checks = flatness(figures.samples, figures.reference)
    width, height = setup.get("size", ("?", "?"))
    lines = [
        SECTION,
        "",
        f"{command}, on {time.strftime('%Y-%m-%d')}. Machine: {machine}.",
        "",
        f"One collection of {figures.images:,} new images (distinct {width} x {height} JPEGs of `bench/images.py`, "
        f"in one zip archive of {figures.archive_bytes / 2**20:.1f} MB, `POST /api/collections`) classified by the web "
        f"app, Redis, a fresh {setup['database']} database and {workers} ({setup['backend']}, random weights; "
        f"{where}), started as bench/run.py starts the system. The limits such a collection needs, in the "
        f"environment of the bench's own server only: {limits(setup['settings'])}. The single-upload saturation row's "
        "images are bench/images.py's 640 x 480 photos: the model's work per image is the same (each is scaled to "
        "224 x 224), their decoding costs the web side more. From the 202 until the collection was done, every "
        f"{setup['every']:g} s: the web process's resident memory and apart its decode processes' (`/proc`), Redis's "
        "`used_memory` (INFO memory), the database's size (`pg_database_size`, or the SQLite file and its WAL) and "
        f"the images done (`GET /api/collections/{{id}}`). Flat: each memory curve's highest, once "
        f"{figures.reference:,} images are done, within {FLAT_SHARE:.0%} above its level then (the highest of its "
        f"samples while the next {figures.reference:,} are done, at least {LEVEL_SAMPLES}: Redis's curve saws as the "
        "stream fills and empties between batches, so one sample caught low is not taken as the level). Growth is "
        "judged; a fall is no cost.",
        "",
        "| images | 202 after | done after (from the 202) | images/s end to end | single-upload saturation | ratio |",
        "| ---: | ---: | ---: | ---: | --- | ---: |",
        f"| {figures.images:,} ({done:,} done, {failed:,} failed) | {figures.answered_s:.2f} s | {ended} | "
        f"**{figures.rate:.1f}** | {figures.saturation:.1f} predictions/s ({figures.saturation_source}) | "
        f"**{ratio:.2f}** |",
        "",
        *bare_model_lines(figures),
        *flatness_rows(figures),
        "",
        f"Database: {before.database_bytes / 2**20:.1f} MB before the collection, {last.database_bytes / 2**20:.1f} MB "
        f"at the end, {growth / 1024:.1f} kB per image: the system of record keeps every prediction, so it grows "
        "with the work by design (plotted, not judged flat).",
        "",
        f"Targets: images/s at least {RATE_TARGET} x the single-upload saturation rate ({met(verdicts['rate'])}: "
        f"{ratio:.2f}); memory flat ({met(verdicts['flat'])}"
        + "".join(f"; {c.curve} {rise(c)}" for c in checks)
        + f"); Redis under {REDIS_TARGET_MB} MB ({met(verdicts['redis'])}: at most "
        f"{redis_peak_mb(figures.samples):.1f} MB).",
        "",
        "![Memory and database size against images done](flat_cost.png)",
        "",
    ]
    return "\n".join(lines)


def plot(figures: Figures, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = [s for s in figures.samples if s.at >= 0]
    done = [s.processed for s in samples]
    levels = {c.curve: c.level for c in flatness(figures.samples, figures.reference)}
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    panels = [
        ("Web process and its decode processes", "MB resident", list(CURVES)[:2]),
        ("Redis used_memory", "MB", list(CURVES)[2:]),
    ]
    for axis, (title, unit, names) in zip(axes, panels, strict=False):
        for name in names:
            (line,) = axis.plot(done, [CURVES[name](s) for s in samples], marker=".", label=name)
            if name in levels:
                axis.axhline((1 + FLAT_SHARE) * levels[name], color=line.get_color(), linestyle="--", linewidth=0.8)
        axis.set(title=title, ylabel=unit)
    axes[1].axhline(REDIS_TARGET_MB, color="red", linestyle=":", label=f"{REDIS_TARGET_MB} MB target")
    axes[2].plot(done, [s.database_bytes / 2**20 for s in samples], marker=".", label=figures.setup["database"])
    axes[2].set(title="Database size", ylabel="MB")
    for axis in axes:
        axis.set(xlabel="images done")
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    fig.suptitle(
        f"{figures.images:,} images in one collection; dashed: {FLAT_SHARE:.0%} above the level after "
        f"{figures.reference:,} images",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
