"""The wait estimate's view of the backlog: read from Redis at most every `ttl`, counting on in between."""

from __future__ import annotations

from redis.asyncio import Redis

from app import keys
from app.jobs.producer import BacklogView, enqueue
from app.jobs.protocol import Heartbeat, Job
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
