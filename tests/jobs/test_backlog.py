"""The wait estimate's view of the backlog: read from Redis at most every `ttl`, counting on in between."""

from __future__ import annotations

from redis.asyncio import Redis

from app import keys
from app.jobs.producer import BacklogView, enqueue, enqueue_bulk
from app.jobs.protocol import BULK_PART, Heartbeat, Job
from tests.helpers import beat, forget_worker


async def test_the_view_counts_its_own_jobs_and_reads_again_after_its_ttl(redis: Redis) -> None:
    await beat(redis, Heartbeat(name="backlog-view", model_id="m", started_at=0.0, images_per_second=10.0), 30)
    view = BacklogView(ttl=3600)
    try:
        assert (await view.capacity(redis, 9101, "m")).depth == 0
        for n in (1, 2):  # another process's jobs: not seen yet
            await enqueue(redis, 9102, Job(f"p-{n}", "a" * 64, "m", b"x"))
        view.enqueued(9101)  # this process's own: counted at once
        kept = await view.capacity(redis, 9101, "m")
        assert (kept.depth, kept.ahead, kept.workers) == (1, 1, 1)
        view.ttl = 0.0
        fresh = await view.capacity(redis, 9101, "m")
        assert fresh.depth == 2  # read again: the other user's two jobs (this one's own was never enqueued)
    finally:
        await redis.delete(keys.jobs(9102), keys.queued_marker("p-1"), keys.queued_marker("p-2"))
        await redis.zrem(keys.JOB_USERS, "9102")
        await forget_worker(redis, "backlog-view")


async def test_with_no_worker_seen_it_reads_every_time(redis: Redis) -> None:
    view = BacklogView(ttl=3600)
    assert (await view.capacity(redis, 9103, "m")).workers == 0
    await beat(redis, Heartbeat(name="backlog-late", model_id="m", started_at=0.0), 30)
    try:
        assert (await view.capacity(redis, 9103, "m")).workers == 1  # a worker that came is seen at once
    finally:
        await forget_worker(redis, "backlog-late")


async def test_while_bulk_work_waits_uploads_are_counted_on_its_share_of_the_workers(redis: Redis) -> None:
    """Bulk work that waits has a part of every batch (BULK_PART): counted at the workers' whole rate, an
    upload admitted at the edge of WAIT_TIMEOUT ended in a 504 rather than the 503 it should have had."""
    await redis.delete(keys.BULK_USERS)
    await beat(redis, Heartbeat(name="backlog-bulk", model_id="m-bulk", started_at=0.0, images_per_second=16.0), 30)
    view = BacklogView(ttl=0.0)
    try:
        assert (await view.capacity(redis, 9104, "m-bulk")).images_per_second == 16.0
        await enqueue_bulk(redis, 9105, [Job("p-bulk", "b" * 64, "m-bulk", b"x")])
        assert (await view.capacity(redis, 9104, "m-bulk")).images_per_second == 16.0 * (1 - 1 / BULK_PART)
    finally:
        await redis.delete(keys.bulk_jobs(9105), keys.queued_marker("p-bulk"))
        await redis.srem(keys.BULK_USERS, "9105")
        await forget_worker(redis, "backlog-bulk")
