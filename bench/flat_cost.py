"""Cost flat as work grows (issue #15, item 5): one collection of 20,000 new images, end to end.

    python bench/flat_cost.py [--images 20000] [--every 10] [--saturation RATE] [--unpinned] [--backend B]

Starts the system as bench/run.py does (its `System`: the web app, Redis, a fresh database and the
workers, pinned as its saturation rows are), raising the limits a collection of this size needs in the
environment of that server only (MAX_COLLECTION_FILES, MAX_COLLECTION_BYTES, QUOTA_IMAGES_PER_DAY,
QUOTA_STORED_BYTES). Posts one zip of distinct 224 x 224 JPEGs (bench/images.py), then until the collection
is done samples, every `--every` seconds: the web process's resident memory and apart its decode processes',
Redis's `used_memory`, the database's size and the images done so far (through the API). Reports the images/s
from the 202 to done against the single-upload saturation rate (a Locust row measured on the same system
just before, unless `--saturation` gives it), the bare model at either end of the run (the machine's speed
drifts), whether each memory curve stayed within 20% of its level after the first 1,000 images, and Redis's
peak against 50 MB. Writes its section of
docs/benchmarks.md (bench/sections.py), docs/flat_cost.png and the "flat_cost" key of docs/benchmarks.json.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import multiprocessing
import os
import sys
import tempfile
import time
import zipfile
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.settings import Settings  # noqa: E402
from bench import hostile, hostile_load  # noqa: E402
from bench import run as bench  # noqa: E402
from bench.flat_figures import SECTION, Figures, Sample, met, plot, report  # noqa: E402
from bench.images import make_image  # noqa: E402
from bench.procs import exit_on_sigterm  # noqa: E402
from bench.sections import write_section  # noqa: E402

IMAGES = 20_000
QUICK_IMAGES = 500  # `make bench --quick`
SATURATION_USERS = 100
# The collection's images: the model's input size, so that 20,000 (22 kB each) fit the default 512 MiB of one
# collection. The saturation row's uploads are bench/images.py's 640 x 480 photos (124 kB).
SIZE = (224, 224)
POLL_S = 1.0  # how often the collection's progress is read (its end is timed to this)
BARE_SECONDS = 12.0  # the bare model at either end of the run
SALT_BIT = 62  # the collection's seeds, apart from Locust's (below 2**44) and run.py's bulk row's


def say(message: str) -> None:
    print(f"[flat cost {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---- the run -------------------------------------------------------------------------------------------


def _jpegs(seeds: range, size: tuple[int, int]) -> list[bytes]:
    return [make_image(seed, size) for seed in seeds]


def archive(images: int, salt: int, size: tuple[int, int] = SIZE) -> bytes:
    """A zip (stored: JPEGs do not deflate) of `images` distinct JPEGs of bench/images.py, made on every core."""
    step = 500
    chunks = [range(salt + i, salt + min(i + step, images)) for i in range(0, images, step)]
    spawn = multiprocessing.get_context("spawn")  # not forked: the bench process may have started TensorFlow
    with ProcessPoolExecutor(os.cpu_count() or 1, mp_context=spawn) as pool:
        made = pool.map(_jpegs, chunks, [size] * len(chunks))
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as packed:
            for i, data in enumerate(data for chunk in made for data in chunk):
                packed.writestr(f"photos/{i:05d}.jpg", data)
    return buffer.getvalue()


def raised_limits(images: int, archive_bytes: int) -> dict[str, str]:
    """The settings of the bench's server that one collection of `images` needs, each at least its default."""
    defaults = Settings()
    return {
        "MAX_COLLECTION_FILES": str(max(images, defaults.max_collection_files)),
        "MAX_COLLECTION_BYTES": str(max(archive_bytes, defaults.max_collection_bytes)),
        "QUOTA_IMAGES_PER_DAY": str(max(images, defaults.quota_images_per_day)),
        "QUOTA_STORED_BYTES": str(max(2 * archive_bytes, defaults.quota_stored_bytes)),  # the zip and each image
    }


async def database_bytes(url: str) -> int:
    if not url.startswith(("postgres://", "postgresql://")):
        path = Path(url.removeprefix("sqlite://"))
        return sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists())
    import asyncpg

    connection = await asyncpg.connect(url.replace("postgres://", "postgresql://", 1))
    try:
        return int(await connection.fetchval("SELECT pg_database_size(current_database())"))
    finally:
        await connection.close()


async def sample(system: bench.System, database_url: str, at: float, processed: int) -> Sample:
    own, kids = await asyncio.to_thread(hostile.Memory(system.processes[0].pid).sample)
    used = (await hostile_load.RedisMemory(system.env["REDIS_URL"]).info())["used_memory"]
    return Sample(at, processed, own, kids, int(used), await database_bytes(database_url))


async def collect(
    system: bench.System, figures: Figures, data: bytes, salt: int, database_url: str, limit: float
) -> None:
    """Send the archive, then sample until the collection is done or `limit` seconds have passed."""
    every = float(figures.setup["every"])
    token = await hostile.register(system.url, f"flat-{salt}@example.com")
    figures.samples.append(await sample(system, database_url, -1.0, 0))
    async with httpx.AsyncClient(
        base_url=system.url, headers={"Authorization": f"Bearer {token}"}, timeout=600
    ) as client:
        sent = time.monotonic()
        files = {"archive": ("photos.zip", data, "application/zip")}
        response = await client.post("/api/collections", files=files, data={"name": "flat cost"})
        accepted = time.monotonic()
        figures.answered_s = accepted - sent
        if response.status_code != 202:
            raise RuntimeError(f"the archive got {response.status_code}: {response.text[:500]}")
        say(f"  202 in {figures.answered_s:.2f} s")
        collection_id, next_sample = response.json()["id"], accepted
        while True:
            status, figures.progress = await hostile_load.collection_progress(client, collection_id)
            now = time.monotonic()
            processed = figures.progress.get("done", 0) + figures.progress.get("failed", 0)
            if status == "done":
                figures.done_s = now - accepted
            if now >= next_sample or status == "done":
                figures.samples.append(await sample(system, database_url, now - accepted, processed))
                s = figures.samples[-1]
                say(
                    f"  {s.at:6.1f} s: {processed} images, web {s.web_kb / 1024:.0f} MB, decoders "
                    f"{s.decoders_kb / 1024:.0f} MB, Redis {s.redis_bytes / 2**20:.1f} MB, "
                    f"database {s.database_bytes / 2**20:.1f} MB"
                )
                next_sample += every * (1 + (now - next_sample) // every)
            if status == "done" or now - accepted > limit:
                return
            await asyncio.sleep(POLL_S)


def saturation_row(system: bench.System, figures: Figures, workdir: Path, users: int, seconds: float) -> None:
    """The single-upload saturation rate on this system: run.py's Locust row, `users` users sending at once."""
    setup = figures.setup
    load = bench.Load(setup["workers"], "saturation", users, setup["pinned"], "distinct", setup["backend"], seconds)
    say(f"single-upload saturation: Locust, {users} users, {seconds:.0f} s")
    bench.run_locust(system, load, workdir, "1" if setup["pinned"] else None)
    figures.saturation = load.served
    figures.saturation_source = f"measured on this system just before: Locust, {users} users, {seconds:.0f} s"
    say(f"  -> {figures.saturation:.1f} predictions/s")
    time.sleep(5)  # the last uploads answered


def bare_model(setup: dict[str, Any]) -> float:
    """The bare model at the worker's batch on the cores the workers get (0: the stand-in has none)."""
    if setup["backend"] not in ("tensorflow", "openvino"):
        return 0.0
    say(f"the bare model: {setup['backend']}, batch {bench.MAX_BATCH}")
    return bench.raw_at_max_batch(BARE_SECONDS, setup["pinned"], setup["backend"])


def measure(figures: Figures, workdir: Path, limit: float, users: int, seconds: float) -> Figures:
    setup = figures.setup
    salt = (1 << SALT_BIT) + (int(time.time()) << 20)
    say(f"making a zip of {figures.images} {SIZE[0]} x {SIZE[1]} JPEGs")
    data = archive(figures.images, salt)
    figures.archive_bytes, setup["size"] = len(data), list(SIZE)
    setup["settings"] = raised_limits(figures.images, len(data))
    say("settings of the bench's server: " + ", ".join(f"{k}={v}" for k, v in setup["settings"].items()))
    workdir.mkdir(parents=True, exist_ok=True)
    every_core = f"0-{(os.cpu_count() or 1) - 1}"
    with bench.database(os.environ.get("DATABASE_URL"), workdir) as database_url:
        setup["database"] = "PostgreSQL" if database_url.startswith("postgres") else "SQLite"
        pin_postgres = setup["pinned"] and setup["database"] == "PostgreSQL"
        figures.bare = [bare_model(setup)]
        with bench.postgres_on_core("1", every_core) if pin_postgres else nullcontext():
            system = bench.System(
                workdir, database_url, setup["workers"], setup["pinned"], setup["backend"], setup["settings"]
            )
            try:
                if not figures.saturation:
                    saturation_row(system, figures, workdir, users, seconds)
                say(f"the collection: {figures.images} images ({len(data) / 2**20:.1f} MB)")
                asyncio.run(collect(system, figures, data, salt, database_url, limit))
            finally:
                system.stop()
        figures.bare.append(bare_model(setup))
    return figures


def publish(figures: Figures, machine: str, command: str, docs: Path) -> None:
    """Its section of docs/benchmarks.md, docs/flat_cost.png and the "flat_cost" key of docs/benchmarks.json."""
    section = report(figures, machine, command)
    print(section)
    docs.mkdir(parents=True, exist_ok=True)
    write_section(docs / "benchmarks.md", section)
    plot(figures, docs / "flat_cost.png")
    path = docs / "benchmarks.json"
    found = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps(found | {"flat_cost": figures.as_json()}, indent=1))
    say(f"wrote the section {SECTION!r} of {docs / 'benchmarks.md'}, {docs / 'flat_cost.png'} and its samples")
    say(", ".join(f"{name}: {met(ok)}" for name, ok in figures.verdicts().items()).replace("*", ""))


def after_bench(args: argparse.Namespace, loads: list[bench.Load], workdir: Path, info: dict[str, str]) -> None:
    """`make bench`'s last part: one worker, OpenVINO (what INFERENCE_BACKEND=auto chose here: TensorFlow
    would take most of an hour for 20,000 images on 2 cores), unpinned, compared with a saturation row at
    the most users measured on the same system just before: not the one above, which ran long enough before
    for the machine's speed to have moved. `--flat-images 0` skips it; `--quick` makes it QUICK_IMAGES."""
    images = min(args.flat_images, QUICK_IMAGES) if args.quick else args.flat_images
    if not images:
        return
    top = max(x.users for x in loads) if loads else SATURATION_USERS
    figures = Figures(images, {"backend": "openvino", "workers": 1, "pinned": False, "every": args.flat_every})
    say(f"cost flat as work grows: one collection of {images} images")
    measure(figures, workdir / "flat-cost", args.flat_limit, top, args.ratio_seconds)
    publish(figures, ", ".join(f"{k} {v}" for k, v in info.items()), "Measured by `make bench`", bench.DOCS)


def add_arguments(parser: argparse.ArgumentParser, prefix: str = "--flat-") -> None:
    """Its arguments: `--flat-images` ... in bench/run.py, `--images` ... here."""
    parser.add_argument(
        f"{prefix}images",
        dest="flat_images",
        type=int,
        default=IMAGES,
        help=f"images in the flat-cost collection (0: none; --quick: {QUICK_IMAGES})",
    )
    parser.add_argument(
        f"{prefix}every", dest="flat_every", type=float, default=10, help="seconds between the flat-cost samples"
    )
    parser.add_argument(
        f"{prefix}limit",
        dest="flat_limit",
        type=float,
        default=7200,
        help="the most seconds the flat-cost collection may take",
    )


def main() -> None:
    exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, "--")
    parser.add_argument("--saturation", type=float, default=0.0, help="the saturation rate (else measured here)")
    parser.add_argument("--saturation-users", type=int, default=SATURATION_USERS)
    parser.add_argument("--saturation-seconds", type=float, default=60)
    parser.add_argument("--backend", default="tensorflow", help="tensorflow, openvino or stand-in")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--unpinned", dest="pinned", action="store_false", help="pin nothing (default: as run.py)")
    parser.add_argument("--docs", type=Path, default=bench.DOCS, help="where the documents are written")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="flat-cost-"))
    say(f"work files and logs in {workdir}")
    setup = {"backend": args.backend, "workers": args.workers, "pinned": args.pinned, "every": args.flat_every}
    figures = Figures(args.flat_images, setup, args.saturation, "given" if args.saturation else "")
    measure(figures, workdir, args.flat_limit, args.saturation_users, args.saturation_seconds)
    info = bench.machine()
    publish(figures, ", ".join(f"{k} {v}" for k, v in info.items()), "`python bench/flat_cost.py`", args.docs)
    if figures.done_s is None:
        sys.exit(1)


if __name__ == "__main__":
    main()
