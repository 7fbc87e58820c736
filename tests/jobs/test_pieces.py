"""Jobs cross Redis a few at a time (JOBS_PER_COMMAND): a request or reply in transit is held in a buffer
beside the stream, so whole batches in one piece raised Redis's memory by half the bulk window's level.
Counted on a Redis server of the module's own (tests/jobs/conftest.py: its command statistics are exact)."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from app import keys
from app.jobs.consumer import Consumer, Limits
from app.jobs.producer import enqueue_bulk, has_job
from app.jobs.protocol import JOBS_PER_COMMAND, PIXELS_BYTES, Job

BATCH = 32


def jobs(count: int) -> list[Job]:
    return [Job(str(uuid.uuid4()), "ab" * 32, "m", bytes(PIXELS_BYTES)) for _ in range(count)]


async def new_group(redis: Redis, stream: str) -> None:
    """The workers' group on a stream not there yet (as a worker has it, once the stream is)."""
    await redis.xgroup_create(stream, keys.WORKERS_GROUP, id="0", mkstream=True)


async def calls(redis: Redis, command: str) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


async def test_bulk_jobs_go_onto_the_stream_a_few_at_a_time_each_with_its_markers(redis62: Redis) -> None:
    made = jobs(20)
    await redis62.config_resetstat()
    await enqueue_bulk(redis62, 7, made)
    assert await redis62.xlen(keys.bulk_jobs(7)) == 20
    assert all([await has_job(redis62, job.prediction_id) for job in made])
    assert await calls(redis62, "exec") == 3  # 8 + 8 + 4
    assert JOBS_PER_COMMAND == 8


async def test_a_worker_reads_a_full_batch_in_pieces(redis62: Redis) -> None:
    await new_group(redis62, keys.bulk_jobs(7))
    await enqueue_bulk(redis62, 7, jobs(40))
    consumer = Consumer(redis62, "w1", Limits(max_batch=BATCH, claim_idle_ms=60_000, max_deliveries=3))
    await redis62.config_resetstat()
    batch = await consumer.next_batch()
    assert len(batch) == BATCH
    assert await calls(redis62, "xreadgroup") == BATCH // JOBS_PER_COMMAND


async def test_users_take_equal_shares_in_pieces_and_one_who_runs_out_drops_out(redis62: Redis) -> None:
    for user, count in ((1, 2), (2, 20), (3, 20)):
        await new_group(redis62, keys.bulk_jobs(user))
        await enqueue_bulk(redis62, user, jobs(count))
    consumer = Consumer(redis62, "w1", Limits(max_batch=BATCH, claim_idle_ms=60_000, max_deliveries=3))
    await redis62.config_resetstat()
    batch = await consumer.next_batch()
    # 2 of each stream per read (8 // 3) until the first runs out (the second read), then the room it left
    # shared by the other two: 4 of each per read (8 // 2), and the last 6 of the 32 as 3 and 3: five reads.
    taken = Counter(delivery.stream for delivery in batch)
    assert taken == {keys.bulk_jobs(1): 2, keys.bulk_jobs(2): 15, keys.bulk_jobs(3): 15}
    assert await calls(redis62, "xreadgroup") == 5


async def test_a_dead_workers_jobs_are_taken_over_in_pieces(redis62: Redis) -> None:
    await new_group(redis62, keys.bulk_jobs(7))
    await enqueue_bulk(redis62, 7, jobs(20))
    limits = Limits(max_batch=BATCH, claim_idle_ms=1, max_deliveries=3)
    assert len(await Consumer(redis62, "dead", limits).next_batch()) == 20  # read, never acknowledged
    # Idle past claim_idle_ms, all of them: on a fast machine the last piece read was not yet (16 of 20).
    await asyncio.sleep(0.02)
    await redis62.config_resetstat()
    taken_over = await Consumer(redis62, "alive", limits).next_batch()
    assert len(taken_over) == 20 and {d.stream for d in taken_over} == {keys.bulk_jobs(7)}
    assert await calls(redis62, "xclaim") == 3  # 8 + 8 + 4


async def test_past_eight_streams_a_read_takes_one_job_of_each_of_eight(redis62: Redis) -> None:
    for user in range(1, 21):
        await new_group(redis62, keys.bulk_jobs(user))
        await enqueue_bulk(redis62, user, jobs(2))
    consumer = Consumer(redis62, "w1", Limits(max_batch=BATCH, claim_idle_ms=60_000, max_deliveries=3))
    await redis62.config_resetstat()
    batch = await consumer.next_batch()
    # 20 streams of room 32: one of each, 8 streams a read (three reads); then the 12 left, one of each of
    # the first 12 streams (two reads).
    assert len(batch) == BATCH and len({d.stream for d in batch}) == 20
    assert await calls(redis62, "xreadgroup") == 5


async def test_a_piece_that_fails_leaves_the_pieces_before_it_reported(redis62: Redis) -> None:
    await redis62.config_set("maxmemory-policy", "noeviction")
    used = int((await redis62.info("memory"))["used_memory"])
    # Redis checks its memory before each command (queued ones too): 1.5 MB more holds one piece as it
    # arrives (eight 150 kB pixel arguments in the query buffer), not the second beside the first on the stream.
    await redis62.config_set("maxmemory", used + 3 * 2**19)
    made, enqueued = jobs(20), list[Job]()
    try:
        with pytest.raises(ResponseError):
            await enqueue_bulk(redis62, 7, made, enqueued)
    finally:
        await redis62.config_set("maxmemory", 0)
    assert enqueued == made[:JOBS_PER_COMMAND]
    assert await redis62.xlen(keys.bulk_jobs(7)) == JOBS_PER_COMMAND
