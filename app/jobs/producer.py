"""The web side of the Redis protocol: enqueue jobs (interactive, and bulk on each user's own stream)
with their markers, and read what the workers report (queue depth, live workers, capacity)."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, fields
from typing import Any

from redis.asyncio import Redis

from app import keys
from app.jobs.protocol import Heartbeat, Job, ensure_group

# A worker that has not reported a rate yet is assumed to clear this many images a second.
ASSUMED_WORKER_RATE = 10.0

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


async def queue_depth(redis: Redis) -> int:
    # Finished entries are deleted, so the stream length is waiting plus in-flight jobs.
    return int(await redis.xlen(keys.JOBS))


async def dead_jobs(redis: Redis) -> int:
    """Jobs given up on after MAX_DELIVERIES (kept on the dead-letter stream for inspection)."""
    return int(await redis.xlen(keys.DEAD_JOBS))


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
