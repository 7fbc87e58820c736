"""The web side of the Redis protocol: enqueue jobs on each user's own streams (interactive, and bulk) with
their markers, and read what the workers report (queue depth, live workers, capacity).

Producers never create consumer groups: a worker that meets a stream without one creates it, from the
stream's first entry, so nothing enqueued before is missed."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, fields
from typing import Any, NamedTuple

from redis.asyncio import Redis

from app import keys
from app.jobs.protocol import (
    BULK_PART,
    Heartbeat,
    Job,
    all_streams,
    bulk_streams,
    in_pieces,
    interactive_lengths,
    lengths,
)

# A worker that has not reported a rate yet is assumed to clear this many images a second.
ASSUMED_WORKER_RATE = 10.0

# A marker outlives any job: a week, like the cached results.
MARKER_TTL = 7 * 24 * 3600


# An interactive job in one command: the job (XADD of its fields), a marker per prediction (SET, as `_add`
# sets them), its user's turn (ZADD) and place among those with jobs waiting (SADD, keys.JOBS_WAITING), all or
# nothing, as a script runs whole; Redis 6.2 runs it as it is.
# The MULTI/EXEC of the same commands cost the web process 0.46 to 0.73 ms of CPU per upload in redis-py,
# the script 0.24 to 0.36 (measured). Bulk pieces keep their transactions: Redis 6.2 checks a script's
# memory only at its first write, so a script per job would let part of a piece through a full Redis.
# KEYS: the stream, JOB_USERS, JOBS_WAITING, the markers. ARGV: the user, the time, MARKER_TTL, then the job's
# fields.
ENQUEUE_SCRIPT = """
redis.call('XADD', KEYS[1], '*', unpack(ARGV, 4))
for i = 4, #KEYS do
  redis.call('SET', KEYS[i], KEYS[1], 'EX', ARGV[3])
end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('SADD', KEYS[3], ARGV[1])
"""


def _add(pipe: Any, stream: str, job: Job) -> None:
    """The job and its markers, in the caller's transaction: both are there or neither."""
    pipe.xadd(stream, job.fields())
    for prediction_id in job.prediction_ids:
        pipe.set(keys.queued_marker(prediction_id), stream, ex=MARKER_TTL)


async def enqueue(redis: Redis, user_id: int, job: Job) -> None:
    """An interactive job, on its user's own stream: workers serve users in turn, ahead of bulk work."""
    markers = [keys.queued_marker(prediction_id) for prediction_id in job.prediction_ids]
    fields = [part for pair in job.fields().items() for part in pair]
    await redis.register_script(ENQUEUE_SCRIPT)(
        keys=[keys.jobs(user_id), keys.JOB_USERS, keys.JOBS_WAITING, *markers],
        args=[user_id, time.time(), MARKER_TTL, *fields],
    )


async def has_job(redis: Redis, prediction_id: str) -> bool:
    return prediction_id in await with_jobs(redis, [prediction_id])


async def with_jobs(redis: Redis, prediction_ids: list[str]) -> set[str]:
    """Those of `prediction_ids` whose job is on a stream, in one round trip."""
    async with redis.pipeline(transaction=False) as pipe:
        for prediction_id in prediction_ids:
            pipe.exists(keys.queued_marker(prediction_id))
        found = await pipe.execute()
    return {prediction_id for prediction_id, n in zip(prediction_ids, found, strict=True) if n}


async def enqueue_bulk(redis: Redis, user_id: int, jobs: list[Job], enqueued: list[Job] | None = None) -> None:
    """Bulk work goes on the user's own stream, which workers read only when interactive work is done;
    JOBS_PER_COMMAND at a time, each with its markers or not at all. `enqueued` gets the jobs that went on,
    piece by piece: if a later piece fails, the caller knows which are on the stream."""
    stream = keys.bulk_jobs(user_id)
    for piece in in_pieces(jobs):
        async with redis.pipeline(transaction=True) as pipe:
            for job in piece:
                _add(pipe, stream, job)
            pipe.sadd(keys.BULK_USERS, str(user_id))
            await pipe.execute()
        if enqueued is not None:
            enqueued += piece


async def queue_depth(redis: Redis) -> int:
    """Jobs on every stream, waiting or in flight (bulk work waiting in the database is not counted)."""
    return sum((await lengths(redis, await all_streams(redis))).values())


async def bulk_depth(redis: Redis) -> int:
    """Jobs on the bulk streams, waiting or in flight: what the feeder bounds (app/feeder.py)."""
    return sum((await lengths(redis, await bulk_streams(redis))).values())


async def dead_jobs(redis: Redis) -> int:
    """Jobs given up on after MAX_DELIVERIES (kept on the dead-letter stream for inspection)."""
    return int(await redis.xlen(keys.DEAD_JOBS))


async def live_workers(redis: Redis) -> list[Heartbeat]:
    """The workers whose heartbeat has not expired; the expired names are removed as they are read. Not a MULTI:
    a full Redis refuses every command queued in one, and /health/ready, /metrics, the admin and collection
    pages then said Redis was down or answered 503, though all they do is read."""
    now = time.time()
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zremrangebyscore(keys.WORKER_NAMES, "-inf", now)
        pipe.zrangebyscore(keys.WORKER_NAMES, f"({now!r}", "+inf")
        _, names = await pipe.execute()
    if not names:
        return []
    beats = await redis.mget([keys.heartbeat(n.decode() if isinstance(n, bytes) else n) for n in names])
    known = {f.name for f in fields(Heartbeat)}
    # Ignore fields a worker of another version may send (rolling deploys).
    return [Heartbeat(**{k: v for k, v in json.loads(raw).items() if k in known}) for raw in beats if raw]


class Workers(NamedTuple):
    """The live workers, by name: `mine` answer jobs of the app's model; `others` run another model and leave
    them (app/worker/loop.py), so they are no capacity of this app's."""

    mine: list[Heartbeat]
    others: list[Heartbeat]


async def workers_of(redis: Redis, model_id: str) -> Workers:
    workers = sorted(await live_workers(redis), key=lambda worker: worker.name)
    return Workers([w for w in workers if w.model_id == model_id], [w for w in workers if w.model_id != model_id])


@dataclass(frozen=True)
class Capacity:
    workers: int
    depth: int  # interactive jobs waiting or in flight, everyone's
    ahead: int  # of those, the ones a new upload of this user waits behind
    images_per_second: float

    def seconds_to_clear(self) -> float:
        return self.ahead / self.images_per_second if self.images_per_second else math.inf


def jobs_ahead(mine: int, others: list[int]) -> int:
    """Users take turns, so a new job waits behind the user's own and, of each other user's, as many as
    the user has plus one: a flood slows down only the user who sends it."""
    return mine + sum(min(theirs, mine + 1) for theirs in others)


@dataclass
class Backlog:
    """The live workers' speed and every user's interactive jobs, as read at `read_at`."""

    workers: int
    rate: float
    lengths: dict[str, int]  # stream -> jobs waiting or in flight, of those that have any
    read_at: float = 0.0

    def capacity(self, user_id: int) -> Capacity:
        others = dict(self.lengths)
        mine = others.pop(keys.jobs(user_id), 0)
        ahead = jobs_ahead(mine, list(others.values()))
        return Capacity(self.workers, mine + sum(others.values()), ahead, self.rate)


async def read_backlog(redis: Redis, model_id: str) -> Backlog:
    """Only the workers of `model_id` count: the others never take its jobs."""
    workers = (await workers_of(redis, model_id)).mine
    rate = sum(w.images_per_second or ASSUMED_WORKER_RATE for w in workers)
    if await redis.scard(keys.BULK_USERS):  # bulk work waits: it has a part of every batch (BULK_PART)
        rate *= 1 - 1 / BULK_PART
    return Backlog(len(workers), rate, (await interactive_lengths(redis)).lengths, time.monotonic())


async def capacity(redis: Redis, user_id: int, model_id: str) -> Capacity:
    return (await read_backlog(redis, model_id)).capacity(user_id)


class BacklogView:
    """The backlog as one web process last read it: at most every `ttl` seconds, with its own enqueued
    jobs counted on in between, so the wait estimate costs no Redis round trip per upload. Off by what
    the other processes enqueued and the workers finished within `ttl`: a fraction of a second of work
    against a wait bound of many seconds. With no worker seen it reads again (a worker may have come)."""

    def __init__(self, ttl: float = 0.25) -> None:
        self.ttl = ttl
        self._backlog: Backlog | None = None

    async def capacity(self, redis: Redis, user_id: int, model_id: str) -> Capacity:
        backlog = self._backlog
        if backlog is None or not backlog.workers or time.monotonic() - backlog.read_at > self.ttl:
            backlog = self._backlog = await read_backlog(redis, model_id)
        return backlog.capacity(user_id)

    def enqueued(self, user_id: int) -> None:
        if self._backlog is not None:
            stream = keys.jobs(user_id)
            self._backlog.lengths[stream] = self._backlog.lengths.get(stream, 0) + 1
