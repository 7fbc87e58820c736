"""The worker loop: read waiting jobs, classify them in one batch, store and publish, then acknowledge."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

import numpy as np
from redis.asyncio import Redis
from tortoise.transactions import in_transaction

from app.background import Every
from app.jobs.consumer import Consumer, Delivery, Limits
from app.jobs.protocol import PIXELS_SHAPE, Heartbeat, Job
from app.jobs.results import Top, publish_done, result_fields
from app.models import Status, finish_queued
from app.outages import DEPENDENCY_ERRORS, database_busy
from app.settings import Settings
from app.worker.classifier import ClassifierLike
from app.worker.stats import observe_batch

log = logging.getLogger("app.worker")

Finished = list[tuple[Delivery, Job, Top]]
# While the database or Redis is down, a finished batch is stored again after a pause that doubles up to this.
MAX_RETRY_PAUSE_S = 4.0
# The next batch is read this far into an inference, by the time the last one took (Worker._infer).
READ_AHEAD_AT = 0.75


class Wedged(Exception):
    """An inference outlived BATCH_TIMEOUT: its thread cannot be stopped, so the worker process must end."""


class Worker:
    def __init__(
        self, redis: Redis, classifier: ClassifierLike, settings: Settings, name: str | None = None, choice: str = ""
    ) -> None:
        """`choice`: why this backend, in one line (app.worker.choice.Choice.summary), for the heartbeat."""
        self.redis = redis
        self.classifier = classifier
        self.settings = settings
        self.name = name or settings.worker_name
        if settings.max_batch < 1:  # 0 would read every waiting job at once
            raise ValueError("MAX_BATCH=0 is resolved before the loop starts: app.worker.batching.worker_batch_size")
        limits = Limits(settings.max_batch, settings.claim_idle_ms, settings.max_deliveries)
        info = classifier.info
        self.consumer = Consumer(redis, self.name, limits, info.id)
        self.heartbeat = Heartbeat(
            name=self.name,
            model_id=info.id,
            started_at=time.time(),
            backend=info.backend,
            engine=info.version,
            backend_choice=choice,
        )
        # The previous batch being stored and acknowledged while this one is inferred.
        self._finishing: asyncio.Task[None] | None = None
        self._unfinished: Callable[[], Coroutine[Any, Any, None]] | None = None
        # The next batch, read while this one is inferred, kept claimed until it starts.
        self._ahead: list[Delivery] = []
        self._ahead_keeper: Every | None = None
        self._last_seconds = 0.0  # the last inference's
        self._stop = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Work until `stop` is set; the batch in hand is always finished first. Raises Wedged when an
        inference hangs, its batch no longer claimed (others take it over) and the heartbeat gone."""
        self._stop = stop
        beating = Every(max(self.settings.heartbeat_ttl / 3, 0.2), self._beat, name="heartbeat")
        log.info("worker %s ready (model %s)", self.name, self.classifier.info.id)
        try:
            while not stop.is_set() or self._ahead:
                await self._round()
        finally:
            stop.set()  # stopping for whatever reason (Wedged too): a store being retried is given up
            await self._take_ahead()
            await self._wait_finished()
            await beating.stop()
            with contextlib.suppress(Exception):
                await self.consumer.leave()
            log.info("worker %s stopped", self.name)

    async def _round(self) -> None:
        try:
            deliveries = await self._take_ahead()
            if not deliveries:
                self._start_finishing()  # the last batch is stored while more work is looked for
                deliveries = await self.consumer.next_batch()
            if deliveries:
                await self._process(deliveries)
            else:
                await self._wait_finished()
        except Wedged:
            raise
        except DEPENDENCY_ERRORS as exc:
            log.warning("lost a dependency (%r); retrying in 1 s", exc)
            await asyncio.sleep(1)
        except Exception:
            # Whatever went wrong, the jobs in hand stay unacknowledged and are retried:
            # the worker itself must not die of it.
            log.exception("unexpected error; retrying in 1 s")
            await asyncio.sleep(1)

    async def _beat(self) -> None:
        await self.consumer.beat(self.heartbeat, self.settings.heartbeat_ttl)

    async def _process(self, deliveries: list[Delivery]) -> None:
        """Classify a batch, then hand it to a task that stores and acknowledges it, so the next batch's
        inference overlaps this one's database and Redis round trips (at most one batch is in that state)."""
        jobs: list[tuple[Delivery, Job]] = []
        for delivery in deliveries:
            try:
                jobs.append((delivery, Job.from_fields(delivery.fields)))
            except ValueError as exc:
                # Left unacknowledged: reclaimed, retried, and dead-lettered after MAX_DELIVERIES.
                log.error("bad job %s: %s", delivery.entry_id, exc)
        jobs = await self._of_my_model(jobs)
        if not jobs:
            return
        keeper = self.consumer.keep_claimed([d for d, _ in jobs])
        try:
            results, seconds = await self._infer([job for _, job in jobs])
            await self._top_up()
        except BaseException:
            await keeper.stop()
            raise
        done = [(d, job, top) for (d, job), top in zip(jobs, results, strict=True) if top is not None]
        # Stored once the next batch is inferred (or none waits): begun now, it would delay that batch.
        self._unfinished = lambda: self._finish(done, keeper, len(jobs), seconds)

    async def _infer(self, jobs: list[Job]) -> tuple[list[Top | None], float]:
        """The batch's results, and the seconds its inference took; meanwhile the batch before it is stored
        and the next one read (neither raises: the inference is always awaited)."""
        started = time.perf_counter()
        inference = asyncio.create_task(self._timed_predict(jobs))
        await self._wait_finished()
        # Late in the inference (as long as the last took): read earlier, jobs another worker could start at
        # once would wait here for this one's whole batch. One that ends sooner goes on as without, and so
        # does the first (no telling when it ends).
        if self._last_seconds:
            late = READ_AHEAD_AT * self._last_seconds - (time.perf_counter() - started)
            await asyncio.wait([inference], timeout=max(late, 0.0))
            if not inference.done():
                await self._read_ahead()
        results, self._last_seconds = await inference
        return results, self._last_seconds

    async def _timed_predict(self, jobs: list[Job]) -> tuple[list[Top | None], float]:
        started = time.perf_counter()
        results = await self._predict(jobs)
        return results, time.perf_counter() - started

    async def _read_ahead(self) -> None:
        """While the model runs, the jobs waiting now (bulk work only while no one uploads: Consumer.next_batch):
        the next batch starts as soon as this one ends, not after reading its pixels (~7 ms of this thread
        for 32 jobs, the cores idle meanwhile)."""
        if self._stop.is_set():
            return
        try:
            self._ahead = await self.consumer.next_batch(ahead=True)
        except Exception:
            log.warning("could not read ahead", exc_info=True)
            return
        if self._ahead:
            self._ahead_keeper = self.consumer.keep_claimed(self._ahead)

    async def _top_up(self) -> None:
        """The batch read ahead, topped up with what came meanwhile (bulk work too), unless taken over from a
        dead worker (a job suspected of killing workers is run alone)."""
        room = self.settings.max_batch - len(self._ahead)
        if self._stop.is_set() or room <= 0 or (self._ahead and self.consumer.reclaimed):
            return
        with contextlib.suppress(Exception):
            self._ahead += await self.consumer.top_up(len(self._ahead))

    async def _take_ahead(self) -> list[Delivery]:
        ahead, self._ahead, keeper, self._ahead_keeper = self._ahead, [], self._ahead_keeper, None
        if keeper is not None:
            await keeper.stop()
        return ahead

    async def _of_my_model(self, jobs: list[tuple[Delivery, Job]]) -> list[tuple[Delivery, Job]]:
        """The jobs this worker's model answers. Another model's are neither classified nor stored (their rows
        would say the other's weights) but declined: a worker of that model takes them over after CLAIM_IDLE;
        with none, they are dead-lettered after MAX_DELIVERIES x CLAIM_IDLE, saying so (app/jobs/consumer.py)."""
        mine = self.classifier.info.id
        others = [(delivery, job) for delivery, job in jobs if job.model_id != mine]
        models = sorted({job.model_id for _, job in others})
        if others:
            log.error(
                "%d jobs of model %s left for a worker of that model: this worker runs %s",
                len(others),
                ", ".join(models),
                mine,
            )
        for model in models:
            await self.consumer.decline([delivery for delivery, job in others if job.model_id == model], model)
        return [(delivery, job) for delivery, job in jobs if job.model_id == mine]

    def _start_finishing(self) -> None:
        unfinished, self._unfinished = self._unfinished, None
        if unfinished is not None:
            self._finishing = asyncio.create_task(unfinished())

    async def _wait_finished(self) -> None:
        """Wait for the previous batch to be stored and acknowledged. If that failed, its jobs stay
        unacknowledged and are taken over later; the batch in hand goes on regardless."""
        self._start_finishing()
        finishing, self._finishing = self._finishing, None
        if finishing is None:
            return
        try:
            await finishing
        except Exception:
            log.exception("could not store a batch; its jobs will be taken over and retried")

    async def _finish(self, done: Finished, keeper: Every, size: int, seconds: float) -> None:
        try:
            await self._retrying(lambda: self._store(done), "store a batch")
            ids = [i for _, job, _ in done for i in job.prediction_ids]
            await self._retrying(lambda: self.consumer.ack([d for d, _, _ in done], ids), "acknowledge a batch")
        finally:
            await keeper.stop()
        log.info("batch size=%d ms=%.1f", size, seconds * 1000)
        self.heartbeat = observe_batch(self.heartbeat, size, seconds)
        try:
            await self._beat()  # fresh stats at once
        except Exception as exc:
            # The batch is stored and acknowledged; only the heartbeat failed (Redis lost meanwhile), and the
            # heartbeat's own rounds try again.
            log.warning("could not send a heartbeat after a batch (%r)", exc)

    async def _retrying(self, action: Callable[[], Awaitable[None]], what: str) -> None:
        """While the database or Redis is down (or SQLite stays locked), again and again, the batch still claimed:
        a failed store is no failed delivery, so no outage dead-letters a job that was classified. Given up when
        the worker stops."""
        pause = 0.5
        while True:
            try:
                return await action()
            except Exception as exc:
                if not (isinstance(exc, DEPENDENCY_ERRORS) or database_busy(exc)) or self._stop.is_set():
                    raise
                log.warning("could not %s (%r); trying again in %.1f s", what, exc, pause)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), pause)
            pause = min(pause * 2, MAX_RETRY_PAUSE_S)

    async def _predict(self, jobs: list[Job]) -> list[Top | None]:
        """One batched inference; if it fails, each job alone, so one bad job fails only itself."""
        batch = np.stack([np.frombuffer(job.pixels, dtype=np.uint8).reshape(PIXELS_SHAPE) for job in jobs])
        timeout = self.settings.batch_timeout
        try:
            return list(await asyncio.wait_for(asyncio.to_thread(self.classifier.predict, batch), timeout))
        except TimeoutError as exc:
            raise Wedged(f"an inference of {len(jobs)} images took more than BATCH_TIMEOUT ({timeout:g} s)") from exc
        except Exception:
            if len(jobs) == 1:
                log.exception("inference failed for job %s", jobs[0].prediction_id)
                return [None]
            log.exception("batch inference failed; retrying its %d jobs one by one", len(jobs))
        singles: list[Top | None] = []
        for i in range(len(jobs)):
            singles.extend(await self._predict(jobs[i : i + 1]))
        return singles

    async def _store(self, done: Finished) -> None:
        """The database first (the system of record, and the result cache), then tell the waiters."""
        info = self.classifier.info
        finished = datetime.now(UTC)
        written: dict[str, dict[str, Any] | None] = {}  # what each waiting request is told
        # One commit for the batch, not one per job (each a disk flush: ~10 ms here, the loop's limit on a GPU).
        async with in_transaction() as connection:
            for _, job, top in done:
                result = result_fields(top, info.version)
                latency_ms = round((time.time() - job.queued_at) * 1000, 1)
                updated = await finish_queued(
                    job.prediction_ids,
                    result | {"status": Status.DONE, "latency_ms": latency_ms, "finished_at": finished},
                    connection,
                )
                if not updated:  # delivered twice (reclaimed, or re-enqueued): the result stands, once
                    log.info("duplicate delivery: prediction %s was already finished", job.prediction_id)
                # The row as written, so the request waiting for it need not read it back; only when this
                # delivery wrote it (else the waiter reads the row: the first delivery's result stands).
                full = updated == len(job.prediction_ids)
                written[job.prediction_id] = (
                    result | {"latency_ms": latency_ms, "finished_at": finished.isoformat()} if full else None
                )
        await publish_done(self.redis, written, Status.DONE)
