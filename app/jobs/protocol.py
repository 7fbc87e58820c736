"""The shapes of what goes through Redis, shared by both sides: jobs, heartbeats, result messages, and
the connection every process opens. Names of keys and streams come from app/keys.py."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar
from uuid import UUID

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ResponseError

from app import keys

PIXELS_SHAPE = (224, 224, 3)
PIXELS_BYTES = PIXELS_SHAPE[0] * PIXELS_SHAPE[1] * PIXELS_SHAPE[2]
# The most jobs one Redis command sends or receives (a pipeline counts as one): while a request or a reply is
# in transit Redis holds it in a buffer beside the stream, so a batch of 32 in one piece (4.8 MB) raised
# Redis's memory by half the bulk window's level for a moment. Pieces of 8 hold 1.2 MB.
JOBS_PER_COMMAND = 8
# While bulk work waits, interactive jobs take all but 1/BULK_PART of a batch (smaller batches: all but one
# in BULK_PART): first always, one person's flood of uploads held everyone's collections back as it lasted.
BULK_PART = 8
Item = TypeVar("Item")


def in_pieces(items: list[Item], size: int = JOBS_PER_COMMAND) -> Iterator[list[Item]]:
    """`items` `size` at a time (jobs, or the streams one read or one script asks about)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def missing_group(exc: ResponseError) -> bool:
    """Redis's answer for a stream without the workers' group (new, or Redis restarted empty)."""
    return "NOGROUP" in str(exc)


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


# Buckets of the histograms that heartbeats carry (see app/worker/stats.py and app/web/metrics.py).
BATCH_SIZE_BUCKETS: tuple[float, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)  # a GPU's batches: up to 256
INFERENCE_SECONDS_BUCKETS: tuple[float, ...] = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass(frozen=True)
class Heartbeat:
    name: str
    model_id: str
    started_at: float
    batches: int = 0
    images: int = 0
    last_batch_size: int = 0
    last_batch_ms: float = 0.0
    images_per_second: float = 0.0  # speed when busy: images/s of inference over recent batches, smoothed
    # Histograms for /metrics: counts per bucket (the buckets above), the last one +Inf.
    batch_size_counts: list[int] = field(default_factory=list)
    inference_counts: list[int] = field(default_factory=list)
    inference_seconds_total: float = 0.0
    # What answers and why (app/worker/choice.py): "openvino", "openvino-2026.4.1-bf16", and one line of the
    # choice's evidence. Empty in the heartbeats of workers from before these fields.
    backend: str = ""
    engine: str = ""
    backend_choice: str = ""


# A reply that never comes (a dead peer that sent no reset) is an error, not a request hung for good.
# Longer than any blocking read the worker makes.
COMMAND_TIMEOUT_S = 15


# A client's connections. A command past them waits up to CONNECTION_WAIT_S for one: redis-py's own pool
# raised MaxConnectionsError past 100, and a burst of uploads from many senders got 503s for it.
REDIS_CONNECTIONS = 100
CONNECTION_WAIT_S = 10


def connect(url: str, command_timeout: float | None = COMMAND_TIMEOUT_S) -> Redis:
    """A client; `command_timeout=None` for a subscription, which waits for messages indefinitely."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=REDIS_CONNECTIONS,
        timeout=CONNECTION_WAIT_S,
        health_check_interval=30,
        socket_connect_timeout=5,
        socket_timeout=command_timeout,
        # Never sent again on a lost connection: Redis may have run it, and a resent enqueue (a script, a
        # MULTI/EXEC) puts its jobs on twice. A pool's default, but not a `Redis(...)`'s (3 retries).
        retry=Retry(NoBackoff(), 0),
    )
    return Redis.from_pool(pool)  # closed with the client


# KEYS: a stream; ARGV: the workers' group. Its group, from its first entry; 0 if the stream is gone. A group needs
# memory, and a full Redis refused it: with every job on streams new since the workers last looked (the feeder's
# window on a bulk stream just emptied and deleted), the workers read nothing, so nothing freed Redis, for good. A
# script's first write, PERSIST (a stream has no TTL: a write that changes nothing), needs no memory, and Redis lets
# a script that has written finish (checked on 6.2 and 7): a full Redis takes the group (a few hundred bytes).
MAKE_GROUP = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('PERSIST', KEYS[1])
local made = redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0')
if type(made) == 'table' and made.err and not string.find(made.err, 'BUSYGROUP') then
  return redis.error_reply(made.err)
end
return 1
"""


async def ensure_group(redis: Redis, stream: str) -> bool:
    """The workers' group on `stream`, from its first entry, in a full Redis too; False if the stream is gone (its
    user forgotten meanwhile: a stream made again here, empty, would stay for good)."""
    return bool(await redis.eval(MAKE_GROUP, 1, stream, keys.WORKERS_GROUP))


def as_text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def interactive_streams(redis: Redis, newest: int = 0) -> list[str]:
    """Every user's interactive stream that may hold jobs (or the `newest` users'), oldest user first. Which hold
    jobs: `interactive_lengths`."""
    return [keys.jobs(as_text(u)) for u in await redis.zrange(keys.JOB_USERS, -newest if newest else 0, -1)]


async def bulk_streams(redis: Redis) -> list[str]:
    users = await redis.smembers(keys.BULK_USERS)
    return sorted(keys.bulk_jobs(as_text(u)) for u in users)


async def all_streams(redis: Redis) -> list[str]:
    return [*await interactive_streams(redis), *await bulk_streams(redis)]


# Questions about every stream, answered inside Redis, STREAMS_PER_SCRIPT at a time: asked with a command per
# stream, 10,000 users' streams (a user's stays 5 minutes after their last upload) had an idle worker send
# 3,128 XPENDING a second on 0.52 of a core, and pick up a new job 1.7 s late (median of 20), not at once. A
# script runs whole, others' commands waiting: 1,000 streams take Redis 1 to 5 ms (measured on 6.2 and 7; the
# consumer sweep takes fewer, cleanup.SWEPT_PER_CALL).
STREAMS_PER_SCRIPT = 1000
# KEYS: streams. The non-empty ones, each followed by its length (waiting plus in-flight jobs).
NON_EMPTY = """
local found = {}
for _, stream in ipairs(KEYS) do
  local n = redis.call('XLEN', stream)
  if n > 0 then
    found[#found + 1] = stream
    found[#found + 1] = n
  end
end
return found
"""
# KEYS: streams; ARGV: the group. Those with jobs delivered and not acknowledged (a stream without the group
# yet has none).
WITH_PENDING = """
local found = {}
for _, stream in ipairs(KEYS) do
  local summary = redis.pcall('XPENDING', stream, ARGV[1])
  if type(summary) == 'table' and not summary.err and summary[1] > 0 then
    found[#found + 1] = stream
  end
end
return found
"""


async def ask_streams(
    redis: Redis, script: str, streams: list[str], *args: str, per_call: int = STREAMS_PER_SCRIPT
) -> list[Any]:
    """What `script` answers for `streams` (its KEYS) and `args`, `per_call` streams at a time."""
    found: list[Any] = []
    for piece in in_pieces(streams, per_call):
        # EVAL, not EVALSHA: the scripts are short, and EVALSHA stays the count of enqueues (bench/web_cost.py).
        found += await redis.eval(script, len(piece), *piece, *args) or []  # a script that answers nothing: None
    return found


async def lengths(redis: Redis, streams: list[str]) -> dict[str, int]:
    """The jobs waiting or in flight on each of `streams` that has any (finished entries are deleted), in the
    order given."""
    found = await ask_streams(redis, NON_EMPTY, streams)
    return {as_text(stream): int(n) for stream, n in zip(found[::2], found[1::2], strict=True)}


# KEYS: JOBS_WAITING, JOB_USERS; ARGV: an SSCAN cursor, STREAMS_PER_SCRIPT, the streams' prefix. The next
# cursor, the users in JOB_USERS, then each waiting user's stream that holds jobs, followed by its length;
# those found empty leave JOBS_WAITING (atomic: a job put on meanwhile puts its user back). Asked of every
# user's stream, 10,000 quiet ones cost each batch of 32 40 ms of a worker's CPU, then (asked inside Redis)
# 10 ms of the worker's and 22 of Redis's; of the waiting ones only, 5.0 to 5.2 and 2.3 to 2.5, as with none
# (measured).
WAITING_LENGTHS = """
local scan = redis.call('SSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
local found = {scan[1], redis.call('ZCARD', KEYS[2])}
for _, user in ipairs(scan[2]) do
  local stream = ARGV[3] .. user
  local n = redis.call('XLEN', stream)
  if n > 0 then
    found[#found + 1] = stream
    found[#found + 1] = n
  else
    redis.call('SREM', KEYS[1], user)
  end
end
return found
"""
# KEYS: JOBS_WAITING, JOB_USERS; ARGV: the first and last rank of the users to look at, the streams' prefix.
# Each user among them whose stream holds jobs but who is not in JOBS_WAITING is put there: the jobs a web
# process of a version before JOBS_WAITING put on (a rolling deploy). The number of users looked at. PCALL: a
# full Redis (maxmemory) refuses the SADD, and an error out of the look stopped the worker's reads, so nothing
# drained it; the user is put back at a look once there is room.
FIND_WAITING = """
local users = redis.call('ZRANGE', KEYS[2], ARGV[1], ARGV[2])
for _, user in ipairs(users) do
  if redis.call('XLEN', ARGV[3] .. user) > 0 and redis.call('SISMEMBER', KEYS[1], user) == 0 then
    redis.pcall('SADD', KEYS[1], user)
  end
end
return #users
"""


@dataclass(frozen=True)
class Interactive:
    users: int  # whose interactive stream is in JOB_USERS (kept a while after their last upload)
    lengths: dict[str, int]  # the jobs waiting or in flight on each of their streams that has any, by stream


async def interactive_lengths(redis: Redis) -> Interactive:
    """The users' interactive streams holding jobs, in a steady order (for the workers' turns): those of
    JOBS_WAITING, STREAMS_PER_SCRIPT at a time (SSCAN may give one twice)."""
    cursor, users, found = 0, 0, dict[str, int]()
    while True:
        cursor, users, *pairs = await redis.eval(
            WAITING_LENGTHS, 2, keys.JOBS_WAITING, keys.JOB_USERS, cursor, STREAMS_PER_SCRIPT, keys.jobs("")
        )
        found.update((as_text(stream), int(n)) for stream, n in zip(pairs[::2], pairs[1::2], strict=True))
        if int(cursor) == 0:
            return Interactive(int(users), dict(sorted(found.items())))


async def find_waiting(redis: Redis) -> None:
    """Every user whose stream holds jobs in JOBS_WAITING, STREAMS_PER_SCRIPT users at a time."""
    start = 0
    while (
        await redis.eval(
            FIND_WAITING, 2, keys.JOBS_WAITING, keys.JOB_USERS, start, start + STREAMS_PER_SCRIPT - 1, keys.jobs("")
        )
        == STREAMS_PER_SCRIPT
    ):
        start += STREAMS_PER_SCRIPT


async def with_pending(redis: Redis, streams: list[str]) -> list[str]:
    """Those of `streams` with jobs delivered to a worker and not acknowledged, in the order given."""
    return [as_text(stream) for stream in await ask_streams(redis, WITH_PENDING, streams, keys.WORKERS_GROUP)]


def result_message(prediction_id: str, status: str, fields: dict[str, Any] | None = None) -> str:
    """A finished job's message. With `fields` (the finished row's result, as the worker wrote it) a waiting
    request answers without reading the row back."""
    message: dict[str, Any] = {"id": prediction_id, "status": status}
    if fields is not None:
        message["fields"] = fields
    return json.dumps(message)
