"""Workers read fairly (app/jobs/consumer.py): every user's stream gets its turn, and a stream new since the
workers last looked loses none of the batch's jobs. On a Redis server of the module's own (conftest.py)."""

from __future__ import annotations

import asyncio
from collections import Counter
from unittest.mock import ANY

import httpx
import pytest
from redis.asyncio import Redis

from app import keys
from app.jobs import cleanup
from app.jobs import consumer as consumer_module
from app.jobs.cleanup import forget_gone_consumers
from app.jobs.consumer import Consumer, Limits
from app.jobs.producer import enqueue, enqueue_bulk, live_workers, with_jobs
from app.jobs.protocol import Heartbeat
from tests.jobs.conftest import full
from tests.jobs.test_pieces import BATCH, jobs, new_group

LIMITS = Limits(max_batch=BATCH, claim_idle_ms=60_000, max_deliveries=3)


async def test_more_users_than_a_batch_each_get_a_turn_beside_bulk_work(redis62: Redis) -> None:
    users = list(range(1, 41))
    for user in users:
        await new_group(redis62, keys.jobs(user))
        await enqueue(redis62, user, jobs(1)[0])
    await new_group(redis62, keys.bulk_jobs(99))
    await enqueue_bulk(redis62, 99, jobs(40))
    consumer = Consumer(redis62, "w1", LIMITS)
    first, second = await consumer.next_batch(), await consumer.next_batch()
    assert len(first) == BATCH and len(second) == BATCH
    read = {d.stream for d in first + second}
    # Every interactive stream within two batches (28 of the first, with bulk work's part of it, then the
    # other 12), and bulk work fills up.
    assert {keys.jobs(user) for user in users} <= read
    bulk_part = BATCH // consumer_module.BULK_PART
    assert sum(d.stream == keys.bulk_jobs(99) for d in first) == bulk_part
    assert sum(d.stream == keys.bulk_jobs(99) for d in second) == BATCH - (40 - (BATCH - bulk_part))


async def test_a_stream_new_since_the_last_look_is_read_with_the_rest_of_the_batch(redis62: Redis) -> None:
    await new_group(redis62, keys.jobs(1))
    await enqueue(redis62, 1, jobs(1)[0])
    await enqueue_bulk(redis62, 2, jobs(3))  # no group yet: no worker has seen this stream
    batch = await Consumer(redis62, "w1", LIMITS).next_batch()
    assert sorted(d.stream for d in batch) == sorted([keys.jobs(1), *[keys.bulk_jobs(2)] * 3])


async def test_users_gone_quiet_do_not_shrink_the_batches_of_those_still_sending(redis62: Redis) -> None:
    """A user's stream stays among the interactive ones for a while after their last upload (the linger). Found in
    the benchmark: 10 such quiet users beside 10 busy ones cut every batch to 10 jobs, one per busy user, with
    dozens waiting, as each user's share was taken of the room before anyone's stream was seen to be empty."""
    consumer = Consumer(redis62, "w1", LIMITS)
    quiet, busy = list(range(1, 11)), [11, 12]
    for user in quiet:
        await new_group(redis62, keys.jobs(user))
        await enqueue(redis62, user, jobs(1)[0])
    done = await consumer.next_batch()
    await consumer.ack(done)
    assert len(done) == len(quiet)
    for user in busy:
        await new_group(redis62, keys.jobs(user))
        for job in jobs(20):
            await enqueue(redis62, user, job)
    batch = await consumer.next_batch()
    assert len(batch) == BATCH
    assert sorted(d.stream for d in batch) == sorted([keys.jobs(11)] * 16 + [keys.jobs(12)] * 16)


async def test_a_users_emptied_streams_are_deleted(redis62: Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found in review: the per-user streams stayed in Redis for good once their users were forgotten, so Redis
    held a stream (and its group) for every user ever seen."""
    await enqueue_bulk(redis62, 7, jobs(2))
    await enqueue(redis62, 8, jobs(1)[0])
    consumer = Consumer(redis62, "w1", LIMITS)
    taken = await consumer.next_batch()
    assert len(taken) == 3
    await consumer.ack(taken)
    assert not await redis62.exists(keys.bulk_jobs(7))  # at once: bulk streams are forgotten when empty
    assert not await redis62.sismember(keys.BULK_USERS, "7")
    monkeypatch.setattr(cleanup, "INTERACTIVE_LINGER_S", 0)  # interactive ones once quiet a while
    consumer._last_reclaim = 0.0
    await consumer.next_batch()
    assert not await redis62.exists(keys.jobs(8))
    await enqueue(redis62, 8, jobs(1)[0])  # back: a worker makes the group again, from the first entry
    assert len(await consumer.next_batch()) == 1


async def test_the_consumers_of_workers_gone_are_removed(redis62: Redis) -> None:
    """Found in review: each worker process ever started stayed a consumer of every stream it had read. A
    consumer with jobs in hand stays (removing it would drop them), and so does one whose worker is live."""
    stream = keys.jobs(9)
    for job in jobs(3):
        await enqueue(redis62, 9, job)
    await new_group(redis62, stream)
    names = ("gone", "gone-with-a-job", "live")
    readers = {name: Consumer(redis62, name, LIMITS) for name in names}
    for name, reader in readers.items():
        done = await reader._xread([stream], 1)
        if name != "gone-with-a-job":
            await reader.ack(done)
    await readers["live"].beat(Heartbeat(name="live", model_id="m", started_at=0.0), ttl=60)
    await forget_gone_consumers(redis62, "sweeper")
    consumers = await redis62.xinfo_consumers(stream, keys.WORKERS_GROUP)
    assert sorted(c["name"] for c in consumers) == [b"gone-with-a-job", b"live"]


async def test_a_full_redis_62_has_dead_workers_jobs_taken_over_while_gone_consumers_wait(redis62: Redis) -> None:
    """Found auditing a full Redis: 6.2 counts XGROUP DELCONSUMER among the commands that need memory, so the
    sweep of gone workers' consumers was refused, and its error came out of the look for dead workers' jobs
    (a ResponseError out of next_batch, logged by the worker as unexpected before a pause of a second)."""
    limits = Limits(max_batch=BATCH, claim_idle_ms=0, max_deliveries=3)
    stream = keys.jobs(11)
    for job in jobs(2):
        await enqueue(redis62, 11, job)
    await new_group(redis62, stream)
    gone = Consumer(redis62, "gone", limits)
    await gone.ack(await gone._xread([stream], 1))  # nothing pending: a consumer the sweep removes
    await Consumer(redis62, "dead", limits)._xread([stream], 1)  # its job waits to be taken over
    sweeper = Consumer(redis62, "sweeper", limits)
    sweeper._last_sweep = -consumer_module.SWEEP_CONSUMERS_EVERY  # the sweep is due
    async with full(redis62, stays=True):
        taken = await sweeper._reclaim()
    assert [d.stream for d in taken] == [stream]
    await forget_gone_consumers(redis62, "sweeper")  # with room, the gone consumers go (the dead one's job taken)
    consumers = await redis62.xinfo_consumers(stream, keys.WORKERS_GROUP)
    assert [c["name"] for c in consumers] == [b"sweeper"]


async def test_with_two_deliveries_a_dead_workers_jobs_are_retried_one_at_a_time(redis62: Redis) -> None:
    """Their second delivery is their last: a job that killed its worker must not take its batch-mates' with it."""
    limits = Limits(max_batch=BATCH, claim_idle_ms=0, max_deliveries=2)
    await enqueue_bulk(redis62, 5, jobs(3))
    assert len(await Consumer(redis62, "dead", limits).next_batch()) == 3
    assert len(await Consumer(redis62, "alive", limits).next_batch()) == 1


async def test_a_stream_deleted_while_a_worker_blocks_on_it_ends_the_read_quietly(redis: Redis) -> None:
    """Found in review: Redis 7 answers a read blocked on a stream deleted meanwhile (its user forgotten by
    another worker) with an error, which the worker logged as unexpected before pausing 1 s; 6.2 stays blocked."""
    user = 987_654
    stream = keys.jobs(user)
    await enqueue(redis, user, jobs(1)[0])
    reader = Consumer(redis, "blocked", LIMITS)
    try:
        await reader.ack(await reader._xread([stream], 1))
        blocked = asyncio.create_task(reader._xread([stream], 1, block=2000))
        await asyncio.sleep(0.3)
        await redis.delete(stream)
        assert await blocked == []
    finally:
        await redis.delete(stream)
        await redis.zrem(keys.JOB_USERS, str(user))


async def test_a_stream_deleted_as_a_worker_reads_it_is_not_made_again(redis62: Redis) -> None:
    """Its user is still listed (the worker looked before the stream was forgotten): an empty stream made
    again then, with no user listed for it later, would stay in Redis for good."""
    await redis62.zadd(keys.JOB_USERS, {"10": 1e12})  # listed, no stream
    consumer = Consumer(redis62, "w1", LIMITS)
    assert await consumer.next_batch() == []
    assert await consumer._xread([keys.jobs(10)], 1) == []
    assert not await redis62.exists(keys.jobs(10))


async def test_a_dead_workers_job_behind_a_batch_of_jobs_held_for_another_model_is_taken_over(
    redis62: Redis,
) -> None:
    """Found in review: the look for idle jobs read the first MAX_BATCH pending entries of each stream, jobs held
    for another model's workers among them, so with that many held at its head (two web versions live at once)
    a dead worker's job behind them was never taken over until those were taken or dead-lettered."""
    limits = Limits(max_batch=4, claim_idle_ms=100, max_deliveries=100)  # held ones fail only after 10 s
    stream = keys.jobs(1)
    await new_group(redis62, stream)
    for job in jobs(limits.max_batch + 2):
        await enqueue(redis62, 1, job)
    old = Consumer(redis62, "old", limits, "m")
    await old.decline(await old._xread([stream], limits.max_batch + 1), "other")
    [lost] = await Consumer(redis62, "dead", limits, "m")._xread([stream], 1)
    await asyncio.sleep(2 * limits.claim_idle_ms / 1000)
    taken = await Consumer(redis62, "alive", limits, "m").next_batch()
    assert [d.entry_id for d in taken] == [lost.entry_id]
    assert await redis62.xpending(stream, keys.WORKERS_GROUP) == {
        "pending": limits.max_batch + 2,
        "min": ANY,
        "max": ANY,
        "consumers": [{"name": b"alive", "pending": 1}, {"name": b"declined-for:other", "pending": 5}],
    }


async def test_one_users_flood_of_uploads_leaves_room_for_everyone_elses_bulk_work(redis62: Redis) -> None:
    """Found in review: interactive jobs took the whole batch whenever enough waited, so one person sending
    synchronous uploads as fast as the workers took them (a few dozen at once) held every other person's
    collections and async jobs back for as long as they kept on. Bulk work waiting now gets a part of each
    batch; interactive jobs take the rest, and the whole batch when no bulk work waits."""
    await new_group(redis62, keys.jobs(1))
    for job in jobs(4 * BATCH):
        await enqueue(redis62, 1, job)
    consumer = Consumer(redis62, "w1", LIMITS)
    alone = await consumer.next_batch()
    assert [d.stream for d in alone] == [keys.jobs(1)] * BATCH  # no bulk work: none of the batch held back
    await new_group(redis62, keys.bulk_jobs(2))
    await enqueue_bulk(redis62, 2, jobs(40))
    beside = await consumer.next_batch()
    bulk = sum(d.stream == keys.bulk_jobs(2) for d in beside)
    assert len(beside) == BATCH and bulk == BATCH // consumer_module.BULK_PART, Counter(d.stream for d in beside)


async def test_a_batch_of_one_gives_bulk_work_a_turn_too(redis62: Redis) -> None:
    """The part of a batch held for bulk work, with batches smaller than BULK_PART: one batch in so many."""
    await new_group(redis62, keys.jobs(1))
    await new_group(redis62, keys.bulk_jobs(2))
    for job in jobs(20):
        await enqueue(redis62, 1, job)
    await enqueue_bulk(redis62, 2, jobs(1))
    consumer = Consumer(redis62, "w1", Limits(max_batch=1, claim_idle_ms=60_000, max_deliveries=3))
    read = [(await consumer.next_batch())[0].stream for _ in range(consumer_module.BULK_PART + 1)]
    assert read.count(keys.bulk_jobs(2)) == 1 and read[-1] == keys.jobs(1), read


async def test_a_full_redis_takes_the_acknowledgements_that_free_it(redis62: Redis) -> None:
    """Found in review: acknowledgements went in a MULTI, and a Redis at its maxmemory refuses every command
    queued in one. The workers classified the jobs of a full Redis and could not delete them, so nothing freed
    it: uploads were refused for good, and the same jobs classified again and again."""
    made = jobs(4)
    for job in made:
        await enqueue(redis62, 1, job)
    consumer = Consumer(redis62, "w1", LIMITS)
    batch = await consumer.next_batch()
    async with full(redis62):
        await consumer.ack(batch, [job.prediction_id for job in made])
    assert await redis62.xlen(keys.jobs(1)) == 0
    assert not await with_jobs(redis62, [job.prediction_id for job in made])


async def test_a_full_redis_has_a_job_dead_lettered_without_its_entry(
    redis62: Redis, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """A dead-letter entry needs memory: in a full Redis it is left out, and the job is acknowledged and deleted
    all the same (it was an error out of every look for dead workers' jobs, which took no other job then).
    `client`: the app running, for the database its predictions are marked failed in."""
    limits = Limits(max_batch=BATCH, claim_idle_ms=0, max_deliveries=1)
    await enqueue(redis62, 1, jobs(1)[0])
    await Consumer(redis62, "dead", limits)._xread([keys.jobs(1)], 1)
    async with full(redis62):
        assert await Consumer(redis62, "alive", limits)._reclaim() == []
    assert await redis62.xlen(keys.jobs(1)) == 0 and await redis62.xlen(keys.DEAD_JOBS) == 0
    assert "Redis is full" in caplog.text
    await enqueue(redis62, 1, jobs(1)[0])  # with room, the entry is kept
    await Consumer(redis62, "dead", limits)._xread([keys.jobs(1)], 1)
    await Consumer(redis62, "alive", limits)._reclaim()
    assert await redis62.xlen(keys.jobs(1)) == 0 and await redis62.xlen(keys.DEAD_JOBS) == 1


async def test_a_full_redis_has_its_jobs_read_beside_a_new_streams(redis62: Redis) -> None:
    """Found in review: a group needs memory, and the workers make a stream's group when they first read it. In a
    full Redis that error came out of every read that met a stream new since the last (a user's first upload just
    before Redis filled), so the workers took no job, nothing freed Redis, and uploads were refused for good. The
    group is made in a full Redis now (protocol.MAKE_GROUP), and the new stream read with the others."""
    older, newer = jobs(2)
    await enqueue(redis62, 1, older)
    await new_group(redis62, keys.jobs(1))
    await enqueue(redis62, 2, newer)
    consumer = Consumer(redis62, "w1", LIMITS)
    async with full(redis62, stays=True):
        batch = await consumer.next_batch()
        await consumer.ack(batch, [older.prediction_id, newer.prediction_id])
    assert sorted(d.stream for d in batch) == [keys.jobs(1), keys.jobs(2)]


async def test_a_full_redis_takes_the_workers_heartbeats(redis62: Redis) -> None:
    """Found auditing a full Redis: a heartbeat went in a MULTI, which a full Redis refuses whole, so HEARTBEAT_TTL
    after Redis filled every worker looked gone while they drained it: /health/ready not ready, /metrics no worker,
    synchronous uploads told no worker runs."""
    worker = Consumer(redis62, "w1", LIMITS)
    await worker.beat(Heartbeat(name="w1", model_id="m", started_at=0.0), ttl=1)
    async with full(redis62, stays=True):
        await asyncio.sleep(1.1)  # the heartbeat sent before Redis filled has expired
        await worker.beat(Heartbeat(name="w1", model_id="m", started_at=0.0, images=5), ttl=60)
        assert [(w.name, w.images) for w in await live_workers(redis62)] == [("w1", 5)]
    assert 50 < await redis62.ttl(keys.heartbeat("w1")) <= 60


async def test_a_full_redis_whose_jobs_are_all_on_new_streams_is_drained(redis62: Redis) -> None:
    """Found auditing a full Redis: its streams' groups, which need memory, were made only once there was room, and
    the jobs of the other streams were to make it. With every job on streams new since the workers last looked
    (the feeder's window put on a bulk stream its user's last batch had emptied and deleted, then Redis full), the
    workers read nothing, nothing freed Redis, and it stayed full for good (the app's feeder and worker, filled
    under them: 170 predictions queued and none finished)."""
    made = jobs(3)
    await enqueue_bulk(redis62, 4, made[:2])
    await enqueue(redis62, 5, made[2])
    consumer = Consumer(redis62, "w1", LIMITS)
    async with full(redis62, stays=True):
        batch = await consumer.next_batch()
        await consumer.ack(batch, [job.prediction_id for job in made])
    assert sorted(d.stream for d in batch) == [keys.bulk_jobs(4), keys.bulk_jobs(4), keys.jobs(5)]
    assert await redis62.xlen(keys.bulk_jobs(4)) == await redis62.xlen(keys.jobs(5)) == 0  # acknowledged, deleted


async def test_a_stream_made_again_without_its_group_during_a_read_drops_none_of_the_batch(
    redis62: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found under load (two workers, collections read beside uploads): a bulk stream met without its group had
    it made, then was removed and made again without one (another worker acknowledged its last entry, the
    feeder added to it) before the read was retried; that second error came out of the whole read, and the
    interactive jobs read before it in the same batch were dropped, held by this worker until they were taken
    over 30 s (CLAIM_IDLE) later: 504s for uploads made at the time. The stream is read at the next read now."""
    await new_group(redis62, keys.jobs(1))
    await enqueue(redis62, 1, jobs(1)[0])
    await enqueue_bulk(redis62, 2, jobs(2))  # no group yet
    ensure, again = consumer_module.ensure_group, jobs(2)

    async def made_again_meanwhile(redis: Redis, stream: str) -> bool:
        made = await ensure(redis, stream)
        if stream == keys.bulk_jobs(2) and again:
            await redis.delete(stream)
            await enqueue_bulk(redis62, 2, [again.pop()])  # made again, without its group
        return made

    monkeypatch.setattr(consumer_module, "ensure_group", made_again_meanwhile)
    consumer = Consumer(redis62, "w1", LIMITS)
    assert [d.stream for d in await consumer.next_batch()] == [keys.jobs(1)]
    monkeypatch.setattr(consumer_module, "ensure_group", ensure)
    assert [d.stream for d in await consumer.next_batch()] == [keys.bulk_jobs(2)]  # read at the next read
