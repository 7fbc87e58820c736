"""Workers read fairly (app/jobs/consumer.py): every user's stream gets its turn, and a stream new since the
workers last looked loses none of the batch's jobs. On a Redis server of the module's own (conftest.py)."""

from __future__ import annotations

from redis.asyncio import Redis

from app import keys
from app.jobs.consumer import Consumer, Limits
from app.jobs.producer import enqueue, enqueue_bulk
from app.jobs.protocol import ensure_group
from tests.jobs.test_pieces import BATCH, jobs

LIMITS = Limits(max_batch=BATCH, claim_idle_ms=60_000, max_deliveries=3)


async def test_more_users_than_a_batch_each_get_a_turn_beside_bulk_work(redis62: Redis) -> None:
    users = list(range(1, 41))
    for user in users:
        await ensure_group(redis62, keys.jobs(user))
        await enqueue(redis62, user, jobs(1)[0])
    await ensure_group(redis62, keys.bulk_jobs(99))
    await enqueue_bulk(redis62, 99, jobs(40))
    consumer = Consumer(redis62, "w1", LIMITS)
    first, second = await consumer.next_batch(), await consumer.next_batch()
    assert len(first) == BATCH and len(second) == BATCH
    read = {d.stream for d in first + second}
    # Every interactive stream within two batches (the first 32, then the other 8), and bulk work fills up.
    assert {keys.jobs(user) for user in users} <= read
    assert sum(d.stream == keys.bulk_jobs(99) for d in second) == BATCH - 8


async def test_a_stream_new_since_the_last_look_is_read_with_the_rest_of_the_batch(redis62: Redis) -> None:
    await ensure_group(redis62, keys.jobs(1))
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
        await ensure_group(redis62, keys.jobs(user))
        await enqueue(redis62, user, jobs(1)[0])
    done = await consumer.next_batch()
    await consumer.ack(done)
    assert len(done) == len(quiet)
    for user in busy:
        await ensure_group(redis62, keys.jobs(user))
        for job in jobs(20):
            await enqueue(redis62, user, job)
    batch = await consumer.next_batch()
    assert len(batch) == BATCH
    assert sorted(d.stream for d in batch) == sorted([keys.jobs(11)] * 16 + [keys.jobs(12)] * 16)
