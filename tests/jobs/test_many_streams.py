"""Questions about every user's stream cost a few commands, not one or more per stream: a user's stream stays
5 minutes after their last upload, so busy hours leave thousands. Commands are counted as the client packs
them, on the way to a real Redis (Redis 6.2, the floor: conftest.py)."""

from __future__ import annotations

import math
import time
from collections import Counter
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection

from app import keys
from app.jobs import cleanup
from app.jobs import consumer as consumer_module
from app.jobs.consumer import Consumer, Limits
from app.jobs.producer import enqueue, queue_depth, read_backlog
from app.jobs.protocol import STREAMS_PER_SCRIPT, Heartbeat
from tests.jobs.conftest import full
from tests.jobs.test_pieces import BATCH, calls, jobs, new_group

QUIET_USERS = 2 * STREAMS_PER_SCRIPT + 500  # three pieces
FEW = 20


def count_sent(monkeypatch: pytest.MonkeyPatch, words: bool = False) -> Counter[str]:
    """The commands every client sends from now on, by name; with `words`, their words (name and arguments)."""
    sent: Counter[str] = Counter()
    pack = AbstractConnection.pack_command

    def counting(self: AbstractConnection, *args: Any) -> Any:
        name = args[0].decode() if isinstance(args[0], bytes) else str(args[0])
        sent[name.upper()] += len(args) if words else 1
        return pack(self, *args)

    monkeypatch.setattr(AbstractConnection, "pack_command", counting)
    return sent


async def quiet_users(redis: Redis, since: float, count: int = QUIET_USERS) -> list[str]:
    """`count` users whose last upload was at `since`, each with an empty stream that workers read."""
    async with redis.pipeline(transaction=False) as pipe:
        for user in range(1, count + 1):
            pipe.xgroup_create(keys.jobs(user), keys.WORKERS_GROUP, id="0", mkstream=True)
            pipe.zadd(keys.JOB_USERS, {str(user): since})
        await pipe.execute()
    return [keys.jobs(user) for user in range(1, count + 1)]


async def enqueue_as_before(redis: Redis, user: int) -> None:
    """A job as a web process of the version before JOBS_WAITING put it on (a rolling deploy): its user not in it."""
    fields: dict[Any, Any] = dict(jobs(1)[0].fields())
    async with redis.pipeline(transaction=True) as pipe:  # what the older ENQUEUE_SCRIPT did
        pipe.xadd(keys.jobs(user), fields)
        pipe.zadd(keys.JOB_USERS, {str(user): time.time()})
        await pipe.execute()


async def test_a_look_for_a_dead_workers_jobs_among_many_quiet_streams_asks_a_few_times(
    redis62: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found measuring: the look went stream by stream, every second. With 10,000 users' streams an idle worker
    sent 3,128 XPENDING a second and picked up a new job after 1.7 s (median) instead of at once."""
    limits = Limits(max_batch=BATCH, claim_idle_ms=0, max_deliveries=3)
    await quiet_users(redis62, time.time())
    user = QUIET_USERS - 7  # in the last piece
    await enqueue(redis62, user, jobs(1)[0])
    [lost] = await Consumer(redis62, "dead", limits)._xread([keys.jobs(user)], 1)
    sent = count_sent(monkeypatch)
    taken = await Consumer(redis62, "alive", limits)._reclaim()
    assert [d.entry_id for d in taken] == [lost.entry_id]
    assert sum(sent.values()) <= FEW, sent  # was over QUIET_USERS: an XPENDING per stream


async def test_the_backlog_of_many_quiet_streams_is_read_in_a_few_commands(
    redis62: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found measuring: each web process read every stream's length every 0.25 s while uploads came, 142 ms
    of its CPU a time with 10,000 users' streams."""
    await quiet_users(redis62, time.time())
    for user in (5, QUIET_USERS):
        for job in jobs(2):
            await enqueue(redis62, user, job)
    sent = count_sent(monkeypatch)
    backlog = await read_backlog(redis62, "m")
    assert backlog.lengths == {keys.jobs(5): 2, keys.jobs(QUIET_USERS): 2}
    assert backlog.capacity(5).ahead == 2 + 2 and await queue_depth(redis62) == 4
    assert sum(sent.values()) <= FEW, sent  # was over QUIET_USERS: an XLEN per stream


async def test_quiet_users_and_gone_workers_are_forgotten_in_a_few_commands(
    redis62: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each user gone quiet was forgotten by a script of its own, and each stream's consumers listed apart. The
    sweep of consumers asks about SWEPT_PER_CALL streams a script: 1,000 held Redis 25 ms (measured)."""
    streams = await quiet_users(redis62, time.time() - cleanup.INTERACTIVE_LINGER_S - 1)
    for job in jobs(3):
        await enqueue(redis62, 2, job)
    for name in ("gone", "live", "sweeper"):  # each becomes a consumer of the stream (one that reads nothing does not)
        reader = Consumer(redis62, name, Limits(BATCH, 60_000, 3))
        await reader.ack(await reader._xread(streams, 1))
    await Consumer(redis62, "live", Limits(BATCH, 60_000, 3)).beat(Heartbeat("live", "m", 0.0), ttl=60)
    await redis62.zadd(keys.JOB_USERS, {"1": time.time()})  # uploaded just now: stays
    await redis62.xadd(streams[1], {"job": "waiting"})  # a job waits: stays
    sent = count_sent(monkeypatch)
    await cleanup.forget_gone_consumers(redis62, "sweeper")
    assert sent["EVAL"] == math.ceil(QUIET_USERS / cleanup.SWEPT_PER_CALL), sent  # was 3, 1,000 streams each
    assert sum(sent.values()) - sent["EVAL"] <= FEW, sent
    sent.clear()
    await cleanup.forget_quiet_users(redis62)
    assert sum(sent.values()) <= FEW, sent
    consumers = await redis62.xinfo_consumers(streams[1], keys.WORKERS_GROUP)
    assert sorted(c["name"] for c in consumers) == [b"live", b"sweeper"]
    assert sorted(await redis62.zrange(keys.JOB_USERS, 0, -1)) == [b"1", b"2"]
    assert await redis62.exists(*streams) == 2


async def test_a_busy_users_batches_are_full_among_many_quiet_users_streams(redis62: Redis) -> None:
    """Found measuring: turns were taken among every user's stream, a batch's room shared out before the empty
    ones were seen to be empty, so 100 quiet users' streams cut a busy user's batches to 1 job (and 10 to 28)."""
    await quiet_users(redis62, time.time(), 100)
    for job in jobs(3 * BATCH):
        await enqueue(redis62, 101, job)
    consumer = Consumer(redis62, "w1", Limits(BATCH, 60_000, 3))
    sizes = []
    for _ in range(3):
        batch = await consumer.next_batch()
        await consumer.ack(batch)
        sizes.append(len(batch))
    assert sizes == [BATCH] * 3


async def test_a_read_among_many_quiet_streams_sends_none_of_their_names(
    redis62: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found measuring: each read had every user's stream name sent to the worker and back to Redis to learn
    which held jobs. With 10,000 users' streams that cost 34 ms of the worker's CPU per batch of 32."""
    await quiet_users(redis62, time.time())
    for job in jobs(BATCH):
        await enqueue(redis62, QUIET_USERS, job)
    sent = count_sent(monkeypatch, words=True)
    await redis62.config_resetstat()
    batch = await Consumer(redis62, "w1", Limits(BATCH, 60_000, 3))._read()
    assert len(batch) == BATCH
    assert sum(sent.values()) <= 10 * FEW, sent  # was over QUIET_USERS: the stream names, in an EVAL
    # Nor does Redis look at them: asked inside Redis, 10,000 quiet streams still cost it 22 ms a batch.
    assert await calls(redis62, "xlen") <= FEW  # was QUIET_USERS + 1


async def test_jobs_put_on_by_an_older_web_process_are_found_and_an_emptied_stream_stops_being_asked_about(
    redis62: Redis,
) -> None:
    """During a rolling deploy a web process from before JOBS_WAITING puts a job on without it; a stream once
    emptied leaves the set at the next read."""
    await quiet_users(redis62, time.time(), 3)
    await enqueue_as_before(redis62, 2)
    consumer = Consumer(redis62, "w1", Limits(BATCH, 60_000, 3))
    batch = await consumer.next_batch()  # the look for dead workers' jobs (once a second) finds it
    assert [d.stream for d in batch] == [keys.jobs(2)]
    await consumer.ack(batch)
    assert await redis62.smembers(keys.JOBS_WAITING) == {b"2"}
    assert await consumer.top_up(0) == []
    assert await redis62.smembers(keys.JOBS_WAITING) == set()


async def test_an_idle_worker_blocks_on_the_latest_users_streams_only(
    redis62: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found measuring: an idle worker blocked on every user's stream, 10 times a second, 0.15 of a core with
    10,000 of them. Any user's job is still taken at the next look."""
    monkeypatch.setattr(consumer_module, "BLOCK_ON", 10)
    await quiet_users(redis62, time.time())
    consumer = Consumer(redis62, "w1", Limits(BATCH, 60_000, 3))
    consumer._last_reclaim = time.monotonic()  # not the once-a-second look: only the read
    sent = count_sent(monkeypatch, words=True)
    assert await consumer.next_batch() == []
    assert sent["XREADGROUP"] <= 2 * 10 + 10, sent  # was 2 x QUIET_USERS: each stream and its ">"
    await enqueue(redis62, 1, jobs(1)[0])
    assert [d.stream for d in await consumer.next_batch()] == [keys.jobs(1)]


async def test_the_looks_for_a_dead_workers_jobs_ask_redis_about_the_streams_holding_jobs(redis62: Redis) -> None:
    """Found measuring: the look, once a second, asked Redis about every user's stream (XPENDING each): with
    10,000 quiet users' streams it was most of what an idle worker cost. Every FIND_WAITING_EVERY it still
    looks at every stream, for jobs a web process of the version before put on."""
    limits = Limits(max_batch=BATCH, claim_idle_ms=0, max_deliveries=3)
    await quiet_users(redis62, time.time())
    dead, alive = Consumer(redis62, "dead", limits), Consumer(redis62, "alive", limits)
    asked = []
    for _ in ("the first look", "the next"):
        await enqueue(redis62, QUIET_USERS - 7, jobs(1)[0])
        [lost] = await dead._xread([keys.jobs(QUIET_USERS - 7)], 1)
        await redis62.config_resetstat()
        alive._last_reclaim = 0.0
        taken = await alive._reclaim()
        assert [d.entry_id for d in taken] == [lost.entry_id]
        await alive.ack(taken)
        asked.append(await calls(redis62, "xpending") + await calls(redis62, "xlen"))
    assert asked[0] >= QUIET_USERS and asked[1] <= FEW, asked  # the next was QUIET_USERS too


async def test_a_full_redis_still_has_its_jobs_taken_with_an_older_web_processs_job_outside_the_set(
    redis62: Redis,
) -> None:
    """Found in review: the once-a-second look put the older web process's user back with SADD, which a full
    Redis refuses (maxmemory, as the first write of a script); the error came out of every look, the worker
    retried a second later, looked again, and took no job, so nothing drained the Redis that was full."""
    for user in (1, 2):
        await new_group(redis62, keys.jobs(user))
    await enqueue(redis62, 1, jobs(1)[0])
    await enqueue_as_before(redis62, 2)
    consumer = Consumer(redis62, "w1", Limits(BATCH, 60_000, 3))
    async with full(redis62):
        batch = await consumer.next_batch()
    assert [d.stream for d in batch] == [keys.jobs(1)]
    await consumer.ack(batch)
    consumer._last_reclaim, consumer._last_find = 0.0, -consumer_module.FIND_WAITING_EVERY  # a look at every stream
    # once there is room again finds the older process's job
    assert [d.stream for d in await consumer.next_batch()] == [keys.jobs(2)]


async def test_a_worker_stopping_in_a_full_redis_leaves_the_live_ones(redis62: Redis) -> None:
    """Its heartbeat and its place among the live workers went in a MULTI, which a full Redis refuses whole: it
    stayed counted until its heartbeat's TTL."""
    consumer = Consumer(redis62, "w1", Limits(BATCH, 60_000, 3))
    await consumer.beat(Heartbeat("w1", "m", 0.0), ttl=60)
    async with full(redis62):
        await consumer.leave()
    assert await redis62.zscore(keys.WORKER_NAMES, "w1") is None
    assert not await redis62.exists(keys.heartbeat("w1"))
