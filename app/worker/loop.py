"""The worker loop: read waiting jobs, classify them in one batch, store and publish, then acknowledge."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol, cast

import numpy as np
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from app import keys, labels, metrics, queue
from app.background import Every
from app.errors import DEPENDENCY_ERRORS
from app.models import Prediction, Status
from app.settings import Settings

log = logging.getLogger("app.worker")

Entry = tuple[bytes, dict[bytes, bytes]]
# When nothing waits anywhere, block this long on the interactive stream, then look at bulk again.
IDLE_BLOCK_MS = 250


@dataclass(frozen=True)
class Delivery:
    stream: str
    entry_id: bytes
    fields: dict[bytes, bytes]


# How often pending entries are checked for dead workers' jobs.
RECLAIM_EVERY = 1.0
DEAD_LETTER_MAXLEN = 100_000
RATE_SMOOTHING = 0.3


class ModelInfoLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def weights(self) -> str: ...
    @property
    def id(self) -> str: ...


class ClassifierLike(Protocol):
    @property
    def info(self) -> ModelInfoLike: ...
    def predict(self, pixels: np.ndarray) -> list[list[tuple[int, float]]]: ...


def top5_dicts(top: Sequence[tuple[int, float]]) -> list[dict[str, Any]]:
    return [
        {"label": labels.LABELS[i].name, "wnid": labels.LABELS[i].wnid, "score": round(float(p), 6)} for i, p in top
    ]


class Worker:
    def __init__(
        self,
        redis: Redis,
        classifier: ClassifierLike,
        settings: Settings,
        name: str | None = None,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self.redis = redis
        self.classifier = classifier
        self.settings = settings
        self.name = name or settings.worker_name
        self.on_batch = on_batch
        self.heartbeat = queue.Heartbeat(name=self.name, model_id=classifier.info.id, started_at=time.time())
        self._last_reclaim = 0.0
        self._turn = 0
        # The previous batch being stored and acknowledged while this one is inferred.
        self._finishing: asyncio.Task[None] | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Work until `stop` is set; the batch in hand is always finished first."""
        await queue.ensure_group(self.redis)
        beating = Every(max(self.settings.heartbeat_ttl / 3, 0.2), self._beat, name="heartbeat")
        log.info("worker %s ready (model %s)", self.name, self.classifier.info.id)
        try:
            while not stop.is_set():
                try:
                    entries = await self._reclaim() or await self._read()
                    if entries:
                        await self._process(entries)
                    else:
                        await self._wait_finished()
                except ResponseError as exc:
                    if "NOGROUP" not in str(exc):
                        raise
                    # Redis restarted without persistence: the groups are gone, make them again.
                    for stream in [keys.JOBS, *await queue.bulk_streams(self.redis)]:
                        await queue.ensure_group(self.redis, stream)
                except DEPENDENCY_ERRORS as exc:
                    log.warning("lost a dependency (%r); retrying in 1 s", exc)
                    await asyncio.sleep(1)
                except Exception:
                    # Whatever went wrong, the jobs in hand stay unacknowledged and are retried:
                    # the worker itself must not die of it.
                    log.exception("unexpected error; retrying in 1 s")
                    await asyncio.sleep(1)
        finally:
            try:
                await self._wait_finished()
            except Exception:  # its jobs stay unacknowledged and another worker retries them
                log.exception("could not store the last batch")
            await beating.stop()
            with contextlib.suppress(Exception):
                await queue.forget_worker(self.redis, self.name)
            log.info("worker %s stopped", self.name)

    async def _beat(self) -> None:
        await queue.beat(self.redis, self.heartbeat, self.settings.heartbeat_ttl)

    async def _xread(self, streams: list[str], count: int, block: int | None = None) -> list[Delivery]:
        response = cast(
            "list[tuple[bytes, list[Entry]]] | None",
            await self.redis.xreadgroup(
                keys.WORKERS_GROUP, self.name, dict.fromkeys(streams, ">"), count=count, block=block
            ),
        )
        return [
            Delivery(stream.decode() if isinstance(stream, bytes) else stream, entry_id, fields)
            for stream, entries in response or []
            for entry_id, fields in entries
            if fields
        ]

    async def _read(self) -> list[Delivery]:
        """Whatever is waiting, up to MAX_BATCH, with no artificial delay: interactive jobs first, then
        an equal share from each user's bulk stream, so bulk work fills the batches but never comes first
        and no one user's collection starves another's."""
        size = self.settings.max_batch
        deliveries = await self._xread([keys.JOBS], size)
        room = size - len(deliveries)
        bulk = await queue.bulk_streams(self.redis) if room else []
        if bulk:
            # COUNT is per stream: with more users than room, take one each from `room` of them,
            # starting one further along every time so everyone gets their turn.
            self._turn = (self._turn + 1) % len(bulk)
            chosen = (bulk[self._turn :] + bulk[: self._turn])[:room]
            deliveries += await self._xread(chosen, max(1, room // len(chosen)))
        if not deliveries:
            deliveries = await self._xread([keys.JOBS], size, block=IDLE_BLOCK_MS)
        return deliveries

    async def _reclaim(self) -> list[Delivery]:
        """Take over jobs idle longer than CLAIM_IDLE (their worker died); dead-letter repeat offenders."""
        now = time.monotonic()
        if now - self._last_reclaim < RECLAIM_EVERY:
            return []
        self._last_reclaim = now
        claimed: list[Delivery] = []
        for stream in [keys.JOBS, *await queue.bulk_streams(self.redis)]:
            claimed += await self._reclaim_stream(stream, self.settings.max_batch - len(claimed))
            if len(claimed) >= self.settings.max_batch:
                break
        return claimed

    async def _reclaim_stream(self, stream: str, count: int) -> list[Delivery]:
        pending: list[dict[str, Any]] = await self.redis.xpending_range(
            stream, keys.WORKERS_GROUP, min="-", max="+", count=count, idle=self.settings.claim_idle_ms
        )
        limit = self.settings.max_deliveries
        exhausted = [p["message_id"] for p in pending if p["times_delivered"] >= limit]
        if exhausted:
            # Claimed first: if two workers look at once, only the one that wins the claim dead-letters it.
            mine = cast(
                "list[bytes]",
                await self.redis.xclaim(
                    stream,
                    keys.WORKERS_GROUP,
                    self.name,
                    min_idle_time=self.settings.claim_idle_ms,
                    message_ids=exhausted,
                    justid=True,
                ),
            )
            for entry_id in mine:
                await self._dead_letter(stream, entry_id)
        retry = [p["message_id"] for p in pending if p["times_delivered"] < limit]
        if not retry:
            return []
        claimed = cast(
            "list[Entry]",
            await self.redis.xclaim(
                stream, keys.WORKERS_GROUP, self.name, min_idle_time=self.settings.claim_idle_ms, message_ids=retry
            ),
        )
        log.info("reclaimed %d jobs of %s from dead or stuck workers", len(claimed), stream)
        # An entry deleted meanwhile comes back with no fields: just acknowledge it.
        await self._ack([Delivery(stream, entry_id, {}) for entry_id, fields in claimed if not fields])
        return [Delivery(stream, entry_id, fields) for entry_id, fields in claimed if fields]

    async def _dead_letter(self, stream: str, entry_id: bytes) -> None:
        entries = cast("list[Entry]", await self.redis.xrange(stream, min=entry_id, max=entry_id))
        fields: dict[bytes, bytes] = entries[0][1] if entries else {}
        error = f"Could not be classified after {self.settings.max_deliveries} attempts"
        ids = [x for x in fields.get(b"id", b"").decode(errors="replace").split(",") if x]
        ids += [x for x in fields.get(b"also", b"").decode(errors="replace").split(",") if x]
        log.error("dead-lettering job %s of %s (predictions %s)", entry_id, stream, ids)
        dead_fields: dict[Any, Any] = {k: v for k, v in fields.items() if k != b"pixels"}
        dead_fields.update({b"entry": entry_id, b"stream": stream, b"error": error.encode()})
        await self.redis.xadd(keys.DEAD_JOBS, dead_fields, maxlen=DEAD_LETTER_MAXLEN, approximate=True)
        for prediction_id in ids:
            with contextlib.suppress(ValueError):
                await Prediction.filter(id=prediction_id, status=Status.QUEUED).update(
                    status=Status.FAILED, error=error, finished_at=datetime.now(UTC)
                )
                await queue.publish_result(self.redis, prediction_id, Status.FAILED)
        await self._ack([Delivery(stream, entry_id, {})], ids)

    async def _process(self, deliveries: list[Delivery]) -> None:
        """Classify a batch, then hand it to a task that stores and acknowledges it, so the next batch's
        inference overlaps this one's database and Redis round trips (at most one batch is in that state)."""
        jobs: list[tuple[Delivery, queue.Job]] = []
        for delivery in deliveries:
            try:
                jobs.append((delivery, queue.Job.from_fields(delivery.fields)))
            except ValueError as exc:
                # Left unacknowledged: reclaimed, retried, and dead-lettered after MAX_DELIVERIES.
                log.error("bad job %s: %s", delivery.entry_id, exc)
        if not jobs:
            return
        keeper = self._keep_claimed([d for d, _ in jobs])
        try:
            started = time.perf_counter()
            results = await self._predict([job for _, job in jobs])
            batch_ms = (time.perf_counter() - started) * 1000
            await self._wait_finished()
        except BaseException:
            await keeper.stop()
            raise
        done = [(d, job, top) for (d, job), top in zip(jobs, results, strict=True) if top is not None]
        self._finishing = asyncio.create_task(self._finish(done, keeper, len(jobs), batch_ms))

    async def _wait_finished(self) -> None:
        """Wait for the previous batch to be stored and acknowledged; its failure is raised here."""
        finishing, self._finishing = self._finishing, None
        if finishing is not None:
            await finishing

    async def _finish(
        self,
        done: list[tuple[Delivery, queue.Job, list[tuple[int, float]]]],
        keeper: Every,
        size: int,
        ms: float,
    ) -> None:
        try:
            await self._store(done)
        finally:
            await keeper.stop()
        await self._ack([delivery for delivery, _, _ in done], [i for _, job, _ in done for i in job.prediction_ids])
        self._record_batch(size, ms)
        await queue.beat(self.redis, self.heartbeat, self.settings.heartbeat_ttl)  # fresh stats at once

    def _keep_claimed(self, deliveries: list[Delivery]) -> Every:
        """While a batch is in hand, keep claiming its entries (JUSTID: no delivery is counted), so a
        slow batch is never mistaken for a dead worker's and classified twice."""
        by_stream: dict[str, list[Any]] = {}
        for delivery in deliveries:
            by_stream.setdefault(delivery.stream, []).append(delivery.entry_id)

        async def claim() -> None:
            for stream, entry_ids in by_stream.items():
                await self.redis.xclaim(
                    stream, keys.WORKERS_GROUP, self.name, min_idle_time=0, message_ids=entry_ids, justid=True
                )

        return Every(self.settings.claim_idle_ms / 3000, claim, name="keep-claimed", wait_first=True)

    async def _predict(self, jobs: list[queue.Job]) -> list[list[tuple[int, float]] | None]:
        """One batched inference; if it fails, each job alone, so one bad job fails only itself."""
        batch = np.stack([np.frombuffer(job.pixels, dtype=np.uint8).reshape(queue.PIXELS_SHAPE) for job in jobs])
        try:
            return list(await asyncio.to_thread(self.classifier.predict, batch))
        except Exception:
            if len(jobs) == 1:
                log.exception("inference failed for job %s", jobs[0].prediction_id)
                return [None]
            log.exception("batch inference failed; retrying its %d jobs one by one", len(jobs))
        singles: list[list[tuple[int, float]] | None] = []
        for i in range(len(jobs)):
            singles.extend(await self._predict(jobs[i : i + 1]))
        return singles

    async def _store(self, done: list[tuple[Delivery, queue.Job, list[tuple[int, float]]]]) -> None:
        """The database first (the system of record), then the cache, then tell the waiters."""
        info = self.classifier.info
        finished = datetime.now(UTC)
        cache: dict[str, str] = {}
        for _, job, top in done:
            top5 = top5_dicts(top)
            result = {
                "label": top5[0]["label"],
                "wnid": top5[0]["wnid"],
                "score": top5[0]["score"],
                "top5": top5,
                "model_version": info.version,
            }
            updated = await Prediction.filter(id__in=job.prediction_ids, status=Status.QUEUED).update(
                **result,
                status=Status.DONE,
                latency_ms=round((time.time() - job.queued_at) * 1000, 1),
                finished_at=finished,
            )
            if not updated:  # delivered twice (reclaimed, or re-enqueued): the result stands, once
                log.info("duplicate delivery: prediction %s was already finished", job.prediction_id)
            cache[keys.result_cache(info.id, job.sha256)] = json.dumps(result)
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, value in cache.items():
                pipe.set(key, value, ex=self.settings.result_ttl)
            for _, job, _ in done:
                pipe.publish(keys.RESULTS, queue.result_message(job.prediction_id, Status.DONE))
            await pipe.execute()

    async def _ack(self, deliveries: list[Delivery], prediction_ids: Sequence[str] = ()) -> None:
        """Acknowledge and delete (finished entries must not accumulate), and drop the predictions'
        queued markers, in one transaction."""
        by_stream: dict[str, list[bytes]] = {}
        for delivery in deliveries:
            by_stream.setdefault(delivery.stream, []).append(delivery.entry_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            for stream, entry_ids in by_stream.items():
                pipe.xack(stream, keys.WORKERS_GROUP, *entry_ids)
                pipe.xdel(stream, *entry_ids)
            queue.forget_markers(pipe, prediction_ids)
            await pipe.execute()
        for stream in by_stream:
            if stream != keys.JOBS:
                await queue.forget_if_empty(self.redis, stream)

    def _record_batch(self, size: int, batch_ms: float) -> None:
        log.info("batch size=%d ms=%.1f", size, batch_ms)
        rate = size / (batch_ms / 1000) if batch_ms > 0 else 0.0
        old = self.heartbeat
        smoothed = (
            rate if not old.images_per_second else old.images_per_second * (1 - RATE_SMOOTHING) + rate * RATE_SMOOTHING
        )
        self.heartbeat = replace(
            old,
            batches=old.batches + 1,
            images=old.images + size,
            last_batch_size=size,
            last_batch_ms=round(batch_ms, 1),
            images_per_second=round(smoothed, 2),
        )
        self.heartbeat = metrics.observe_batch(self.heartbeat, size, batch_ms / 1000)
        if self.on_batch:
            self.on_batch(size, batch_ms)
