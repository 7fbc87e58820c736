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
