"""The worker loop with the stand-in classifier: batches, storage, the cache, acknowledgement, duplicates.
(`client` runs the app, which opens the database for the test.)"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, cast
from uuid import uuid4

import numpy as np
import pytest
from redis.asyncio import Redis

from app import keys, labels
from app.jobs.producer import enqueue, enqueue_bulk, queue_depth
from app.jobs.protocol import PIXELS_SHAPE, Job
from app.models import Prediction, Status, User
from app.settings import Settings
from app.worker.classifier import StandInClassifier
from app.worker.loop import Worker
from tests.conftest import reset_queue, running_worker
from tests.helpers import eventually, pending_for


async def queued(user: User, settings: Settings, seed: int) -> tuple[Prediction, Job]:
    pixels = np.random.default_rng(seed).integers(0, 256, PIXELS_SHAPE, dtype=np.uint8).tobytes()
    sha = hashlib.sha256(pixels).hexdigest()
    prediction = await Prediction.create(
        user=user,
        image_sha256=sha,
        image_path=f"{sha[:2]}/{sha}.png",
        model_name=settings.model_name,
        model_weights=settings.model_weights,
        status=Status.QUEUED,
        enqueued_at=datetime.now(UTC),  # enqueued by the test itself, not by the feeder
    )
    return prediction, Job(str(prediction.id), sha, settings.model_id, pixels)


async def all_finished(ids: list[str], seconds: float = 20) -> list[Prediction]:
    for _ in range(int(seconds / 0.05)):
        rows = await Prediction.filter(id__in=ids)
        if all(row.status != Status.QUEUED for row in rows):
            return rows
        await asyncio.sleep(0.05)
    raise AssertionError("the worker did not finish the jobs")


async def a_user() -> User:
    return await User.create(email=f"loop-{uuid4().hex[:10]}@example.com", password_hash="not a hash")


async def test_waiting_jobs_are_one_batch_stored_cached_and_acknowledged(
    redis: Redis, classifier: Any, settings: Settings, client: Any
) -> None:
    await reset_queue(redis)
    user = await a_user()
    made = [await queued(user, settings, seed) for seed in range(6)]
    for _, job in made:
        await enqueue(redis, user.id, job)
    async with running_worker(redis, classifier, settings) as counting:
        rows = await all_finished([str(p.id) for p, _ in made])
    assert (counting.calls, counting.images) == (1, 6)  # everything waiting went into one batch
    names = {label.name for label in labels.LABELS}
    for row in rows:
        assert row.status == Status.DONE and row.label in names and len(row.top5 or []) == 5
        assert row.model_version == "stand-in" and row.finished_at is not None
    assert await queue_depth(redis) == 0
    assert not await redis.exists(*[keys.queued_marker(str(p.id)) for p, _ in made])


async def test_the_same_image_always_gets_the_same_answer(
    redis: Redis, classifier: Any, settings: Settings, client: Any
) -> None:
    await reset_queue(redis)
    user = await a_user()
    first, job = await queued(user, settings, 99)
    second, again = await queued(user, settings, 99)
    other, different = await queued(user, settings, 100)
    for each in (job, again, different):
        await enqueue(redis, user.id, each)
    async with running_worker(redis, classifier, settings):
        rows = {str(r.id): r for r in await all_finished([str(first.id), str(second.id), str(other.id)])}
    assert rows[str(first.id)].top5 == rows[str(second.id)].top5
    assert rows[str(first.id)].top5 != rows[str(other.id)].top5


async def test_a_job_delivered_twice_finishes_once(
    redis: Redis, classifier: Any, settings: Settings, client: Any
) -> None:
    await reset_queue(redis)
    user = await a_user()
    prediction, job = await queued(user, settings, 7)
    await enqueue(redis, user.id, job)
    async with running_worker(redis, classifier, settings):
        [row] = await all_finished([str(prediction.id)])
        finished_at = row.finished_at
        await enqueue(redis, user.id, job)  # re-enqueued (say, by recovery) after it was done
        for _ in range(100):
            if not await queue_depth(redis):
                break
            await asyncio.sleep(0.05)
    await row.refresh_from_db()
    assert row.status == Status.DONE and row.finished_at == finished_at  # the first result stands
    assert await queue_depth(redis) == 0


async def pending(redis: Redis, stream: str) -> int:
    return int((await redis.xpending(stream, keys.WORKERS_GROUP))["pending"])


async def test_a_worker_of_another_model_leaves_the_job_to_a_worker_of_its_model(
    redis: Redis, classifier: Any, settings: Settings, client: Any
) -> None:
    """Found in review: a worker ignored the job's model and answered it with its own weights, into rows (and
    the result cache) that say the web app's; in a rolling deploy the right worker now takes it over."""
    await reset_queue(redis)
    user = await a_user()
    made = [await queued(user, settings, 400 + seed) for seed in range(2)]
    for _, job in made:
        await enqueue(redis, user.id, job)
    other = StandInClassifier("imagenet")
    assert other.info.id != settings.model_id
    async with running_worker(redis, other, settings) as wrong:
        for _ in range(100):
            if await pending(redis, keys.jobs(user.id)) == 2:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # time to have classified and stored them, were it going to
    assert wrong.calls == 0
    assert [row.status for row in await Prediction.filter(id__in=[p.id for p, _ in made])] == [Status.QUEUED] * 2
    async with running_worker(redis, classifier, settings) as right:  # the deploy's new worker, after CLAIM_IDLE
        rows = await all_finished([str(p.id) for p, _ in made])
    assert right.images == 2 and [row.status for row in rows] == [Status.DONE] * 2


async def test_a_worker_of_another_model_does_not_take_a_job_again(
    redis: Redis, classifier: Any, settings: Settings, client: Any
) -> None:
    """Found in review: a worker of another model took a declined job over again at each CLAIM_IDLE, using up its
    deliveries, so in a rolling deploy the job was dead-lettered before a worker of its model came."""
    await reset_queue(redis)
    user = await a_user()
    prediction, job = await queued(user, settings, 420)
    await enqueue(redis, user.id, job)
    async with running_worker(redis, StandInClassifier("imagenet"), settings):
        await asyncio.sleep(2.5 * settings.claim_idle_ms / 1000)  # two looks for idle jobs, at least
        [entry] = await redis.xpending_range(keys.jobs(user.id), keys.WORKERS_GROUP, "-", "+", 10)
        assert entry["times_delivered"] == 1
        async with running_worker(redis, classifier, settings) as right:  # the new worker, alongside
            [row] = await all_finished([str(prediction.id)])
    assert row.status == Status.DONE and right.images == 1


async def test_a_job_no_worker_of_its_model_takes_fails_saying_so(
    redis: Redis, settings: Settings, client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Found in review: with no worker of the job's model, a worker of another one answered it. Now it is left
    once, never taken again (no spinning), and fails after MAX_DELIVERIES x CLAIM_IDLE, saying why."""
    await reset_queue(redis)
    user = await a_user()
    prediction, job = await queued(user, settings, 410)
    await enqueue(redis, user.id, job)
    async with running_worker(redis, StandInClassifier("imagenet"), settings) as wrong:
        [row] = await all_finished([str(prediction.id)], seconds=(settings.max_deliveries + 3) * 1.5 + 5)
    assert wrong.calls == 0 and row.status == Status.FAILED
    expected = f"No worker of model {settings.model_id} took it"
    assert row.error is not None and row.error.startswith(expected), row.error
    [(_, dead)] = cast("list[tuple[bytes, dict[bytes, bytes]]]", await redis.xrange(keys.DEAD_JOBS))
    assert dead[b"error"].decode().startswith(expected)
    left = [r for r in caplog.records if "left for a worker of that model" in r.getMessage()]
    assert len(left) == 1, [r.getMessage() for r in left]


class HeldClassifier:
    """The stand-in, whose `held`th batch waits for `release` (a model still running, for as long as a test
    likes), and the batches before it take `before_s` each."""

    def __init__(self, inner: Any, held: int = 1, before_s: float = 0.0) -> None:
        self.inner, self.started, self.release = inner, threading.Event(), threading.Event()
        self.held, self.before_s = held, before_s
        self.batches: list[int] = []

    @property
    def info(self) -> Any:
        return self.inner.info

    def predict(self, pixels: Any) -> Any:
        self.batches.append(len(pixels))
        if len(self.batches) < self.held:
            time.sleep(self.before_s)
        elif len(self.batches) == self.held:
            self.started.set()
            self.release.wait(60)
        return self.inner.predict(pixels)


async def has_pending(redis: Redis, consumer: str, streams: list[str], count: int) -> bool:
    return await pending_for(redis, consumer, streams) == count


@contextlib.asynccontextmanager
async def held_worker(
    redis: Redis, settings: Settings, held: HeldClassifier, made: list[tuple[Prediction, Job]]
) -> AsyncIterator[str]:
    """A worker running `held` one job a batch, its name given once the held batch has started. After, the
    batch is released and the worker stopped once the jobs `made` are finished."""
    stop, name = asyncio.Event(), f"test-{uuid4().hex[:8]}"
    task = asyncio.create_task(Worker(redis, held, replace(settings, max_batch=1), name=name).run(stop))
    try:
        assert await asyncio.to_thread(held.started.wait, 60)
        yield name
    finally:
        held.release.set()
        await all_finished([str(p.id) for p, _ in made])
        stop.set()
        await task


async def statuses(made: list[tuple[Prediction, Job]]) -> list[Status]:
    return [row.status for row in await Prediction.filter(id__in=[p.id for p, _ in made])]


async def test_the_next_batch_is_read_while_the_model_runs_and_bulk_work_is_not(
    redis: Redis, classifier: Any, settings: Settings, client: Any
) -> None:
    """While a batch is inferred, the interactive jobs waiting are read (their pixels take this thread ~7 ms
    for 32, which the cores would otherwise sit idle through), so the next batch starts the moment this one
    ends. Bulk work is not read ahead: an upload coming meanwhile still goes before it."""
    await reset_queue(redis)
    user, other = await a_user(), await a_user()
    made = [await queued(user, settings, 101), await queued(user, settings, 104), await queued(other, settings, 102)]
    bulk = await queued(other, settings, 103)
    for owner, (_, job) in zip((user, user, other), made, strict=True):
        await enqueue(redis, owner.id, job)
    await enqueue_bulk(redis, other.id, [bulk[1]])
    interactive = [keys.jobs(user.id), keys.jobs(other.id)]
    held = HeldClassifier(classifier, held=2, before_s=0.4)  # read ahead 0.3 s into the held batch
    async with held_worker(redis, settings, held, [*made, bulk]) as name:
        await asyncio.sleep(0.4)  # past the read ahead; the batch before is acknowledged by then
        # One job in hand, the last read ahead: both claimed while the model is held.
        await eventually(lambda: has_pending(redis, name, interactive, 2), 30, "the next batch read ahead")
        await asyncio.sleep(0.3)  # time enough to read the bulk job too, were it read ahead
        assert await pending_for(redis, name, interactive) == 2
        assert await pending_for(redis, name, [keys.bulk_jobs(other.id)]) == 0
        assert held.batches == [1, 1]
    assert await statuses([*made, bulk]) == [Status.DONE] * 4 and held.batches == [1, 1, 1, 1]


async def test_with_no_one_uploading_bulk_work_is_read_ahead(
    redis: Redis, classifier: Any, settings: Settings, client: Any
) -> None:
    await reset_queue(redis)
    user = await a_user()
    made = [await queued(user, settings, seed) for seed in (121, 122, 123)]
    await enqueue_bulk(redis, user.id, [job for _, job in made])
    held = HeldClassifier(classifier, held=2, before_s=0.4)
    async with held_worker(redis, settings, held, made) as name:
        await asyncio.sleep(0.4)  # past the read ahead; the batch before is acknowledged by then
        # One in hand, one read ahead.
        await eventually(lambda: has_pending(redis, name, [keys.bulk_jobs(user.id)], 2), 30, "bulk work read ahead")
    assert await statuses(made) == [Status.DONE] * 3 and held.batches == [1, 1, 1]


class RecordingClassifier:
    """The stand-in, recording the images of each batch (by their pixels' SHA-256)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.batches = inner, cast(list[set[str]], [])

    @property
    def info(self) -> Any:
        return self.inner.info

    def predict(self, pixels: Any) -> Any:
        self.batches.append({hashlib.sha256(image.tobytes()).hexdigest() for image in pixels})
        time.sleep(0.05)  # long enough for the next batch to be read ahead
        return self.inner.predict(pixels)


async def test_read_ahead_batches_keep_bulk_works_part(
    redis: Redis, classifier: Any, settings: Settings, client: Any
) -> None:
    """One person's flood of uploads still leaves bulk work its part of each batch (BULK_PART) when batches
    are read ahead: only their interactive part is, the bulk part being topped up after."""
    await reset_queue(redis)
    flooder, collector = await a_user(), await a_user()
    uploads = [await queued(flooder, settings, seed) for seed in range(200, 240)]
    bulk = [await queued(collector, settings, seed) for seed in range(300, 303)]
    for _, job in uploads:
        await enqueue(redis, flooder.id, job)
    await enqueue_bulk(redis, collector.id, [job for _, job in bulk])
    recording = RecordingClassifier(classifier)
    stop = asyncio.Event()
    task = asyncio.create_task(Worker(redis, recording, replace(settings, max_batch=8), name="test-part").run(stop))
    try:
        await all_finished([str(p.id) for p, _ in [*uploads, *bulk]])
    finally:
        stop.set()
        await task
    bulk_shas = {job.sha256 for _, job in bulk}
    assert [len(batch & bulk_shas) for batch in recording.batches[:3]] == [1, 1, 1]  # 8 // BULK_PART each


async def test_the_next_batch_is_read_late_in_the_inference(
    redis: Redis, classifier: Any, settings: Settings, client: Any
) -> None:
    """As the inference nears its end (READ_AHEAD_AT of the time the last one took), not as it begins: a job
    that comes early in it stays free for another worker to start at once, rather than wait for this batch."""
    await reset_queue(redis)
    user = await a_user()
    made = [await queued(user, settings, seed) for seed in (131, 132, 133)]
    for _, job in made[:2]:
        await enqueue(redis, user.id, job)
    # Read ahead at 2.25 s into the held batch: the look below, 0.3 s in, comes well before it even on a stalled
    # machine (at 0.9 s, a stall of 0.6 s had it see the read ahead).
    held = HeldClassifier(classifier, held=2, before_s=3.0)
    stream = keys.jobs(user.id)
    async with held_worker(redis, settings, held, made) as name:  # the second job's batch started
        await enqueue(redis, user.id, made[2][1])
        await asyncio.sleep(0.3)
        assert await pending_for(redis, name, [stream]) == 1  # only the batch in hand: the new job is free
        await eventually(lambda: has_pending(redis, name, [stream], 2), 30, "the third job read ahead late")
    assert await statuses(made) == [Status.DONE] * 3 and held.batches == [1, 1, 1]


async def test_nothing_is_read_ahead_of_a_workers_first_inference(
    redis: Redis, classifier: Any, settings: Settings, client: Any
) -> None:
    """There is no telling when the first ends: read at once, its next batch waited for it, though another
    worker might have started it (two workers sharing 24 uploads now and then took them all in one)."""
    await reset_queue(redis)
    user = await a_user()
    made = [await queued(user, settings, seed) for seed in (141, 142)]
    for _, job in made:
        await enqueue(redis, user.id, job)
    held = HeldClassifier(classifier)
    async with held_worker(redis, settings, held, made) as name:
        await asyncio.sleep(0.5)
        assert await pending_for(redis, name, [keys.jobs(user.id)]) == 1
    assert await statuses(made) == [Status.DONE] * 2


async def test_a_batch_read_ahead_is_classified_before_the_worker_stops(
    redis: Redis, classifier: Any, settings: Settings, client: Any
) -> None:
    await reset_queue(redis)
    user = await a_user()
    made = [await queued(user, settings, seed) for seed in (111, 112, 113)]
    for _, job in made:
        await enqueue(redis, user.id, job)
    held = HeldClassifier(classifier, held=2, before_s=0.4)
    stop, name = asyncio.Event(), f"test-{uuid4().hex[:8]}"
    task = asyncio.create_task(Worker(redis, held, replace(settings, max_batch=1), name=name).run(stop))
    assert await asyncio.to_thread(held.started.wait, 60)
    await asyncio.sleep(0.4)  # past the read ahead; the batch before is acknowledged by then
    await eventually(lambda: has_pending(redis, name, [keys.jobs(user.id)], 2), 30, "the third job read ahead")
    stop.set()
    held.release.set()
    await task
    rows = await Prediction.filter(id__in=[p.id for p, _ in made])
    assert [row.status for row in rows] == [Status.DONE] * 3
    assert await pending_for(redis, name, [keys.jobs(user.id)]) == 0 and held.batches == [1, 1, 1]
