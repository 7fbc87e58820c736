"""An interactive job goes on in one command (app/jobs/producer.py's script): the job, its markers and its
user's turn, all or nothing. On a Redis server of the module's own (conftest.py), Redis 6.2."""

from __future__ import annotations

import os
import time
import uuid
from typing import cast

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from app import keys
from app.jobs.producer import MARKER_TTL, enqueue, has_job, read_backlog, workers_of
from app.jobs.protocol import PIXELS_BYTES, Heartbeat, Job
from tests.helpers import beat
from tests.jobs.conftest import full
from tests.jobs.test_pieces import calls


def job() -> Job:
    # Random pixels: every byte value, so the entry must come back byte for byte.
    return Job(str(uuid.uuid4()), "ab" * 32, "m", os.urandom(PIXELS_BYTES), also=(str(uuid.uuid4()),))


async def test_a_job_its_markers_and_its_users_turn_go_on_in_one_command(redis62: Redis) -> None:
    made = job()
    await redis62.config_resetstat()
    before = time.time()
    await enqueue(redis62, 7, made)
    # One script call, not a MULTI/EXEC of separate commands (the first call also loads the script).
    assert await calls(redis62, "multi") == await calls(redis62, "exec") == 0
    loaded = await calls(redis62, "evalsha")
    entries = cast("list[tuple[bytes, dict[bytes, bytes]]]", await redis62.xrange(keys.jobs(7)))
    assert [Job.from_fields(entry) for _, entry in entries] == [made]
    for prediction_id in made.prediction_ids:
        assert await has_job(redis62, prediction_id)
        assert await redis62.get(keys.queued_marker(prediction_id)) == keys.jobs(7).encode()
        assert 0 < await redis62.ttl(keys.queued_marker(prediction_id)) <= MARKER_TTL
    score = await redis62.zscore(keys.JOB_USERS, "7")
    assert score is not None and before <= score <= time.time()
    await enqueue(redis62, 7, job())  # loaded once: this one is a single EVALSHA
    assert await calls(redis62, "evalsha") == loaded + 1
    assert await redis62.xlen(keys.jobs(7)) == 2


async def test_a_full_redis_takes_nothing_of_the_job(redis62: Redis) -> None:
    made = job()
    async with full(redis62):
        with pytest.raises(ResponseError):
            await enqueue(redis62, 8, made)
    # No marker without its job, no turn without a job: the web process can mark the prediction failed.
    assert await redis62.exists(keys.jobs(8), *map(keys.queued_marker, made.prediction_ids)) == 0
    assert await redis62.zscore(keys.JOB_USERS, "8") is None


async def test_a_full_redis_still_says_which_workers_are_live(redis62: Redis) -> None:
    """Found auditing a full Redis: the live workers were read in a MULTI, whose every command a full Redis
    refuses, so /health/ready said Redis was down and no worker was live, /metrics answered 503 without a figure,
    and the admin and collection pages 503, while all they do is read."""
    await beat(redis62, Heartbeat(name="live", model_id="m", started_at=0.0), ttl=60)
    await redis62.zadd(keys.WORKER_NAMES, {"expired": time.time() - 1})
    async with full(redis62, stays=True):
        assert [w.name for w in (await workers_of(redis62, "m")).mine] == ["live"]
        assert (await read_backlog(redis62, "m")).workers == 1
    assert await redis62.zrange(keys.WORKER_NAMES, 0, -1) == [b"live"]  # the expired name removed
