"""The Redis protocol between the web app and the workers: jobs, results, the cache, heartbeats."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from typing import Any
from uuid import UUID

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from app import keys

log = logging.getLogger(__name__)

PIXELS_SHAPE = (224, 224, 3)
PIXELS_BYTES = PIXELS_SHAPE[0] * PIXELS_SHAPE[1] * PIXELS_SHAPE[2]
# A worker that has not reported a rate yet is assumed to clear this many images a second.
ASSUMED_WORKER_RATE = 10.0


@dataclass(frozen=True)
class Job:
    prediction_id: str
    sha256: str
    model_id: str
    pixels: bytes  # 224x224x3 uint8 RGB, row-major
    queued_at: float = field(default_factory=time.time)
    # Other predictions of the same image (duplicates in a collection): one model call answers all.
    also: tuple[str, ...] = ()

    @property
    def prediction_ids(self) -> list[str]:
        return [self.prediction_id, *self.also]

    def fields(self) -> dict[str, str | bytes]:
        return {
            "id": self.prediction_id,
            "sha": self.sha256,
            "model": self.model_id,
            "pixels": self.pixels,
            "at": repr(self.queued_at),
            "also": ",".join(self.also),
        }

    @classmethod
    def from_fields(cls, fields: dict[bytes, bytes]) -> Job:
        """Parse a stream entry; ValueError for a malformed one (it will be dead-lettered)."""
        try:
            job = cls(
                prediction_id=fields[b"id"].decode(),
                sha256=fields[b"sha"].decode(),
                model_id=fields[b"model"].decode(),
                pixels=fields[b"pixels"],
                queued_at=float(fields[b"at"]),
                also=tuple(x for x in fields.get(b"also", b"").decode().split(",") if x),
            )
            for prediction_id in job.prediction_ids:
                UUID(prediction_id)
        except (KeyError, ValueError) as exc:
            raise ValueError(f"malformed job: {exc!r}") from exc
        if len(job.pixels) != PIXELS_BYTES:
            raise ValueError(f"malformed job: {len(job.pixels)} pixel bytes, expected {PIXELS_BYTES}")
        return job


@dataclass(frozen=True)
class Heartbeat:
    name: str
    model_id: str
    started_at: float
    batches: int = 0
    images: int = 0
    last_batch_size: int = 0
    last_batch_ms: float = 0.0
    images_per_second: float = 0.0  # recent throughput, smoothed
    # Cumulative histograms for /metrics (see app.metrics): counts per bucket, last one +Inf.
    batch_size_counts: list[int] = field(default_factory=list)
    inference_counts: list[int] = field(default_factory=list)
    inference_seconds_total: float = 0.0


# A reply that never comes (a dead peer that sent no reset) is an error, not a request hung for good.
# Longer than any blocking read the worker makes.
COMMAND_TIMEOUT_S = 15


def connect(url: str, command_timeout: float | None = COMMAND_TIMEOUT_S) -> Redis:
    """A client; `command_timeout=None` for a subscription, which waits for messages indefinitely."""
    return Redis.from_url(url, health_check_interval=30, socket_connect_timeout=5, socket_timeout=command_timeout)


async def ensure_group(redis: Redis, stream: str = keys.JOBS) -> None:
    try:
        await redis.xgroup_create(stream, keys.WORKERS_GROUP, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


# A marker outlives any job: a week, like the cached results.
MARKER_TTL = 7 * 24 * 3600


def _add(pipe: Any, stream: str, job: Job) -> None:
    """The job and its markers, in the caller's transaction: both are there or neither."""
    pipe.xadd(stream, job.fields())
    for prediction_id in job.prediction_ids:
        pipe.set(keys.queued_marker(prediction_id), stream, ex=MARKER_TTL)


async def enqueue(redis: Redis, job: Job) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        _add(pipe, keys.JOBS, job)
        await pipe.execute()


async def has_job(redis: Redis, prediction_id: str) -> bool:
    return bool(await redis.exists(keys.queued_marker(prediction_id)))


def forget_markers(pipe: Any, prediction_ids: Iterable[str]) -> None:
    """Forget the markers of finished (or dead-lettered) predictions, in the worker's ack transaction."""
    markers = [keys.queued_marker(p) for p in prediction_ids]
    if markers:
        pipe.delete(*markers)


async def enqueue_bulk(redis: Redis, user_id: int, jobs: list[Job]) -> None:
    """Bulk work goes on the user's own stream, which workers read only when interactive work is done."""
    if not jobs:
        return
    stream = keys.bulk_jobs(user_id)
    await ensure_group(redis, stream)
    async with redis.pipeline(transaction=True) as pipe:
        for job in jobs:
            _add(pipe, stream, job)
        pipe.sadd(keys.BULK_USERS, str(user_id))
        await pipe.execute()


async def bulk_streams(redis: Redis) -> list[str]:
    users = await redis.smembers(keys.BULK_USERS)
    return sorted(keys.bulk_jobs(u.decode() if isinstance(u, bytes) else u) for u in users)


# Drop a user from the bulk set once their stream is empty (atomic: a concurrent enqueue re-adds them).
_FORGET_IF_EMPTY = """
if redis.call('XLEN', KEYS[2]) == 0 then redis.call('SREM', KEYS[1], ARGV[1]) end
"""


async def forget_if_empty(redis: Redis, stream: str) -> None:
    user_id = stream.rsplit(":", 1)[1]
    await redis.eval(_FORGET_IF_EMPTY, 2, keys.BULK_USERS, stream, user_id)


async def queue_depth(redis: Redis) -> int:
    # Finished entries are deleted, so the stream length is waiting plus in-flight jobs.
    return int(await redis.xlen(keys.JOBS))


# What a cached result holds: the Prediction fields that depend only on the image and the model.
CACHED_FIELDS = ("label", "wnid", "score", "top5", "model_version")


async def cached_result(redis: Redis, model_id: str, sha256: str) -> dict[str, Any] | None:
    raw = await redis.get(keys.result_cache(model_id, sha256))
    if not raw:
        return None
    stored = json.loads(raw)
    return {name: stored.get(name) for name in CACHED_FIELDS}


def result_message(prediction_id: str, status: str) -> str:
    return json.dumps({"id": prediction_id, "status": status})


async def publish_result(redis: Redis, prediction_id: str, status: str) -> None:
    await redis.publish(keys.RESULTS, result_message(prediction_id, status))


async def beat(redis: Redis, heartbeat: Heartbeat, ttl: int) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        pipe.set(keys.heartbeat(heartbeat.name), json.dumps(asdict(heartbeat)), ex=ttl)
        pipe.zadd(keys.WORKER_NAMES, {heartbeat.name: time.time() + ttl})
        await pipe.execute()


async def forget_worker(redis: Redis, name: str) -> None:
    """A worker stopping: gone from the live ones at once, not when its heartbeat expires."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(keys.heartbeat(name))
        pipe.zrem(keys.WORKER_NAMES, name)
        await pipe.execute()


async def live_workers(redis: Redis) -> list[Heartbeat]:
    async with redis.pipeline(transaction=True) as pipe:
        pipe.zremrangebyscore(keys.WORKER_NAMES, "-inf", time.time())
        pipe.zrange(keys.WORKER_NAMES, 0, -1)
        _, names = await pipe.execute()
    if not names:
        return []
    beats = await redis.mget([keys.heartbeat(n.decode() if isinstance(n, bytes) else n) for n in names])
    known = {f.name for f in fields(Heartbeat)}
    # Ignore fields a worker of another version may send (rolling deploys).
    return [Heartbeat(**{k: v for k, v in json.loads(raw).items() if k in known}) for raw in beats if raw]


@dataclass(frozen=True)
class Capacity:
    workers: int
    depth: int
    images_per_second: float

    def seconds_to_clear(self) -> float:
        return self.depth / self.images_per_second if self.images_per_second else math.inf


async def capacity(redis: Redis) -> Capacity:
    workers = await live_workers(redis)
    rate = sum(w.images_per_second or ASSUMED_WORKER_RATE for w in workers)
    return Capacity(workers=len(workers), depth=await queue_depth(redis), images_per_second=rate)


class ResultWaiter:
    """One Redis subscription per process that hands finished results to the requests awaiting them.
    It owns `redis`, a client without a command timeout (`connect(url, command_timeout=None)`)."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._waiters: dict[str, list[asyncio.Future[str]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        # Checked as well as cancelling: a cancellation inside a Redis call may come out as an error.
        self._stopping = False

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="result-waiter")
        # Wait briefly for the subscription so the first requests' results are not missed.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout=5)

    async def stop(self) -> None:
        self._stopping = True
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.redis.aclose()

    def expect(self, prediction_id: str) -> asyncio.Future[str]:
        """Register interest before checking the stored result, so no message can slip between."""
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(prediction_id, []).append(future)
        return future

    def forget(self, prediction_id: str, future: asyncio.Future[str]) -> None:
        waiting = self._waiters.get(prediction_id, [])
        if future in waiting:
            waiting.remove(future)
        if not waiting:
            self._waiters.pop(prediction_id, None)

    def _dispatch(self, data: bytes) -> None:
        try:
            message = json.loads(data)
            prediction_id, status = str(message["id"]), str(message["status"])
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring malformed result message %r", data[:200])
            return
        for future in self._waiters.pop(prediction_id, []):
            if not future.done():
                future.set_result(status)

    async def _run(self) -> None:
        while not self._stopping:
            try:
                async with self.redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(keys.RESULTS)
                    self._ready.set()
                    async for message in pubsub.listen():
                        if message["type"] == "message":
                            self._dispatch(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception:  # Redis went away: resubscribe when it is back.
                log.warning("result subscription lost; retrying in 1 s", exc_info=True)
                await asyncio.sleep(1)
