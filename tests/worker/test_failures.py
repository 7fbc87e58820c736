"""The worker outside the happy path: a backend that hangs, a database that goes away while a batch is
stored, an image that kills the process running it, a dead-letter that cannot be written. Each loses no
job that could be classified, and fails for good only the job that cannot."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any
from uuid import uuid4

import numpy as np
import pytest
from redis.asyncio import Redis
from tortoise.exceptions import DBConnectionError, OperationalError

from app import keys
from app.jobs import consumer
from app.jobs.consumer import Consumer, Limits
from app.jobs.producer import enqueue, live_workers
from app.models import Prediction, Status
from app.run import Restarting
from app.settings import Settings
from app.worker import loop
from app.worker.__main__ import WEDGED_EXIT
from app.worker.loop import Wedged, Worker
from tests.conftest import reset_queue, running_worker
from tests.helpers import eventually
from tests.jobs.conftest import full
from tests.worker.test_loop import a_user, all_finished, queued


@dataclass
class Hanging:
    """A backend that stops answering (a wedged driver, a deadlock): its call returns once `released` (a minute
    at most), not after a fixed time, which a stalled machine could see pass before the worker's deadline."""

    inner: Any
    released: threading.Event = field(default_factory=threading.Event)

    @property
    def info(self) -> Any:
        return self.inner.info

    def predict(self, pixels: Any) -> Any:
        self.released.wait(60)
        return self.inner.predict(pixels)


@dataclass
class Poisoned:
    """An image that kills the process running it (a segfault in a decoder, the OOM killer): the batch that
    holds it never returns; the test then kills the worker."""

    inner: Any
    poison: bytes
    met: threading.Event = field(default_factory=threading.Event)

    @property
    def info(self) -> Any:
        return self.inner.info

    def predict(self, pixels: Any) -> Any:
        if any(image.tobytes() == self.poison for image in np.asarray(pixels)):
            self.met.set()
            time.sleep(1)
            raise RuntimeError("the process died with this batch")
        return self.inner.predict(pixels)


async def test_a_hung_inference_stops_the_worker_and_its_jobs_are_taken_over(
    redis: Redis, classifier: Any, settings: Settings, client: Any
) -> None:
    """Found in review: `predict` had no deadline, and the worker kept its batch claimed while it hung, so no
    other worker took the jobs over and its heartbeat still showed it live: those predictions stayed queued."""
    await reset_queue(redis)
    user = await a_user()
    made = [await queued(user, settings, 300 + seed) for seed in range(3)]
    for _, job in made:
        await enqueue(redis, user.id, job)
    hanging = Hanging(classifier)
    hung = Worker(redis, hanging, replace(settings, batch_timeout=0.5), name="hung")
    try:
        with pytest.raises(Wedged):
            await asyncio.wait_for(hung.run(asyncio.Event()), 60)
    finally:
        hanging.released.set()
    assert not await redis.exists(keys.heartbeat("hung"))  # not shown as live any more
    async with running_worker(redis, classifier, settings):
        rows = await all_finished([str(p.id) for p, _ in made])
    assert [row.status for row in rows] == [Status.DONE] * 3


async def test_a_worker_process_whose_inference_hangs_exits_for_another_to_start(
    redis: Redis, classifier: Any, settings: Settings, client: Any
) -> None:
    """`python -m app.worker` itself, with the real model: past BATCH_TIMEOUT (here any inference) it exits
    with WEDGED_EXIT, which `make run` starts another worker on; its heartbeat is gone and its job is left
    for another worker, not acknowledged."""
    await reset_queue(redis)
    user = await a_user()
    prediction, job = await queued(user, settings, 400)
    await enqueue(redis, user.id, job)
    env = os.environ | {"WORKER_NAME": "wedged", "INFERENCE_BACKEND": "tensorflow", "BATCH_TIMEOUT": "0.001"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app.worker", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output = (await asyncio.wait_for(process.communicate(), 300))[0].decode()
    assert process.returncode == WEDGED_EXIT, output[-3000:]
    assert "took more than BATCH_TIMEOUT" in output
    assert not await redis.exists(keys.heartbeat("wedged"))
    assert (await Prediction.get(id=prediction.id)).status == Status.QUEUED
    async with running_worker(redis, classifier, settings):
        rows = await all_finished([str(prediction.id)])
    assert rows[0].status == Status.DONE


async def test_a_database_outage_while_storing_fails_no_job(
    redis: Redis, classifier: Any, settings: Settings, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: each failed store left the batch unacknowledged, each retry counted as a delivery, and an
    outage of MAX_DELIVERIES x CLAIM_IDLE failed good jobs for good ("Could not be classified after 3 attempts")."""
    await reset_queue(redis)
    user = await a_user()
    made = [await queued(user, settings, 310 + seed) for seed in range(3)]
    outage_s = 1.5 * settings.max_deliveries * settings.claim_idle_ms / 1000
    back_at = time.monotonic() + outage_s
    stored = loop.finish_queued

    async def finish_queued(*args: Any) -> int:
        if time.monotonic() < back_at:
            raise DBConnectionError("the database is down (a test's outage)")
        return await stored(*args)

    monkeypatch.setattr(loop, "finish_queued", finish_queued)
    for _, job in made:
        await enqueue(redis, user.id, job)
    async with running_worker(redis, classifier, settings):
        rows = await all_finished([str(p.id) for p, _ in made], seconds=outage_s + 20)
    assert [row.status for row in rows] == [Status.DONE] * 3
    assert await redis.xlen(keys.DEAD_JOBS) == 0


async def test_a_database_locked_while_storing_fails_no_job(
    redis: Redis, classifier: Any, settings: Settings, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite fails a write with "database is locked" when another connection holds its lock past the busy
    timeout. The worker gave up on such a store at once: the jobs were taken over, inferred again, and after
    MAX_DELIVERIES such stores failed for good. It is busy for now: stored again, as in an outage."""
    await reset_queue(redis)
    user = await a_user()
    made = [await queued(user, settings, 330 + seed) for seed in range(3)]
    locked_until = time.monotonic() + 1.5 * settings.max_deliveries * settings.claim_idle_ms / 1000
    stored = loop.finish_queued

    async def finish_queued(*args: Any) -> int:
        if time.monotonic() < locked_until:
            raise OperationalError("database is locked")
        return await stored(*args)

    monkeypatch.setattr(loop, "finish_queued", finish_queued)
    for _, job in made:
        await enqueue(redis, user.id, job)
    async with running_worker(redis, classifier, settings) as counting:
        rows = await all_finished([str(p.id) for p, _ in made], seconds=locked_until - time.monotonic() + 20)
    assert [row.status for row in rows] == [Status.DONE] * 3
    assert counting.images == 3  # inferred once: stored again, not taken over
    assert await redis.xlen(keys.DEAD_JOBS) == 0


async def test_an_image_that_kills_the_worker_fails_alone(
    redis: Redis, classifier: Any, settings: Settings, client: Any
) -> None:
    """Found in review: jobs taken over from a dead worker were retried together, so an image that killed the
    worker used up its batch-mates' deliveries too, and all of them were dead-lettered."""
    await reset_queue(redis)
    user = await a_user()
    made = [await queued(user, settings, 320 + seed) for seed in range(5)]
    poison = made[2][1]
    for _, job in made:
        await enqueue(redis, user.id, job)
    kills = 0
    ids = [str(p.id) for p, _ in made]
    for _ in range(settings.max_deliveries + 2):
        backend = Poisoned(classifier, poison.pixels)
        stop = asyncio.Event()
        task = asyncio.create_task(Worker(redis, backend, settings, name=f"poisoned-{uuid4().hex[:6]}").run(stop))

        async def killed_or_done(met: threading.Event = backend.met) -> bool:
            return met.is_set() or not await Prediction.filter(id__in=ids, status=Status.QUEUED).exists()

        await eventually(killed_or_done, seconds=20, what="the poison met, or every job done")
        if not backend.met.is_set():
            stop.set()
            await task
            break
        kills += 1  # killed mid-batch: nothing of it stored or acknowledged
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    rows = {str(row.id): row for row in await all_finished(ids)}
    assert kills == settings.max_deliveries  # the poison itself, each time
    assert rows.pop(str(poison.prediction_id)).status == Status.FAILED
    assert [row.status for row in rows.values()] == [Status.DONE] * 4


async def test_a_dead_letter_the_database_refuses_is_written_once_and_holds_up_no_other_stream(
    redis: Redis, settings: Settings, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: the dead-letter entry was added before the prediction was marked failed; with the
    database down, every later look added it again, and the error stopped the reclaim of the streams after it."""
    await reset_queue(redis)
    first, second = await a_user(), await a_user()
    exhausted, job = await queued(first, settings, 330)
    await enqueue(redis, first.id, job)
    limits = Limits(max_batch=16, claim_idle_ms=0, max_deliveries=2)
    gone = Consumer(redis, "gone", limits)
    [read] = await gone.next_batch()
    await redis.xclaim(read.stream, keys.WORKERS_GROUP, "gone-too", 0, [read.entry_id])  # delivered twice
    _, other = await queued(second, settings, 331)
    await enqueue(redis, second.id, other)
    assert [d.stream for d in await gone.next_batch()] == [keys.jobs(second.id)]
    down = True
    marked = consumer.mark_failed

    async def mark_failed(*args: Any) -> list[str]:
        if down:
            raise DBConnectionError("the database is down (a test's outage)")
        return await marked(*args)

    monkeypatch.setattr(consumer, "mark_failed", mark_failed)
    worker = Consumer(redis, "w", limits)
    taken = await worker.next_batch()
    assert [d.stream for d in taken] == [keys.jobs(second.id)]  # the other stream's job, taken over
    await worker.ack(taken)
    assert await redis.xlen(keys.DEAD_JOBS) == 0
    worker._last_reclaim = 0.0  # the next look, at once
    await worker.next_batch()
    assert await redis.xlen(keys.DEAD_JOBS) == 0
    down = False
    worker._last_reclaim = 0.0
    await worker.next_batch()
    assert await redis.xlen(keys.DEAD_JOBS) == 1
    await exhausted.refresh_from_db()
    assert exhausted.status == Status.FAILED
    assert not await redis.exists(keys.queued_marker(str(exhausted.id)))


def test_make_run_starts_a_stopped_worker_again_after_a_pause_that_grows() -> None:
    """The worker exits when an inference hangs; under `make run` nothing else would start another."""
    stopping = [sys.executable, "-c", f"import sys; sys.exit({WEDGED_EXIT})"]
    child = Restarting("worker", stopping, first_pause=0.2, max_pause=60)
    first = child.process
    first.wait()
    child.check()  # noticed: due again in 0.2 s
    assert child.process is first and child.due is not None
    time.sleep(0.3)
    child.check()
    assert child.process is not first and child.pause == 0.4  # started again; the next pause is longer
    child.process.wait()


async def test_a_full_redis_has_its_batch_stored_and_the_heartbeat_after_it_sent(
    redis62: Redis, classifier: Any, settings: Settings, client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Found in review: a full Redis refused the heartbeat sent after each batch (then in a MULTI), and that error
    came out of the batch's store, logged as "could not store a batch; its jobs will be taken over and retried":
    the batch had been stored and acknowledged, and nothing would be retried. A full Redis takes heartbeats now
    (tests/jobs/test_consumer.py): the one after the batch counts it."""
    user = await a_user()
    prediction, job = await queued(user, settings, 420)
    await enqueue(redis62, user.id, job)
    stop = asyncio.Event()

    async def counted() -> bool:
        return [w.images for w in await live_workers(redis62)] == [1]

    async with full(redis62, stays=True):
        task = asyncio.create_task(Worker(redis62, classifier, settings, name="full-redis").run(stop))
        try:
            [row] = await all_finished([str(prediction.id)])
            await eventually(counted, what="the batch counted in the worker's heartbeat")
        finally:
            stop.set()
            await task
    assert row.status == Status.DONE and await redis62.xlen(keys.jobs(user.id)) == 0
    assert "could not store a batch" not in caplog.text and "heartbeat" not in caplog.text
