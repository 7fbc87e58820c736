"""The session's Redis (REDIS_URL: in CI, and on this machine, a server other runs and databases share) is never
changed as a whole by a test; the tests that need a full Redis fill a private one of the version the run targets."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from app.jobs.protocol import connect
from app.settings import Settings
from tests import redis_servers
from tests.jobs.conftest import full


async def in_a_pipeline(redis: Redis) -> object:
    pipeline = redis.pipeline(transaction=False)
    pipeline.set("x", 1)
    pipeline.config_set("maxmemory", 1)
    return await pipeline.execute()


SERVER_WIDE: dict[str, Callable[[Redis], Awaitable[object]]] = {
    "CONFIG SET maxmemory": lambda redis: redis.config_set("maxmemory", 1),
    "CONFIG SET maxmemory-policy": lambda redis: redis.config_set("maxmemory-policy", "allkeys-lru"),
    "CONFIG RESETSTAT": lambda redis: redis.config_resetstat(),
    "FLUSHALL": lambda redis: redis.flushall(),
    "CLIENT KILL TYPE pubsub": lambda redis: redis.client_kill_filter(_type="pubsub"),
    "CLIENT PAUSE": lambda redis: redis.client_pause(1),
    "SCRIPT FLUSH": lambda redis: redis.script_flush(),
    "DEBUG SLEEP": lambda redis: redis.execute_command("DEBUG", "SLEEP", 0),
    "in a pipeline": lambda redis: in_a_pipeline(redis),
}


@pytest.mark.parametrize("command", SERVER_WIDE)
async def test_a_server_wide_command_never_reaches_the_sessions_redis(
    redis: Redis, settings: Settings, command: str
) -> None:
    before = await redis.config_get("maxmemory*")
    other = connect(settings.redis_url)  # a client of its own, as an app a test builds on REDIS_URL has
    try:
        for client in (redis, other):
            with pytest.raises(redis_servers.ServerWideCommand, match="use private_redis"):
                await SERVER_WIDE[command](client)
    finally:
        await other.aclose()
    assert redis_servers.refused  # what the per-test check (tests/conftest.py) fails a test for
    redis_servers.refused.clear()  # here, expected
    assert await redis.config_get("maxmemory*") == before
    assert await redis.ping()  # what a database's own test does still goes through


async def test_the_private_redis_can_be_filled_and_is_of_the_runs_version(
    private_redis: str, settings: Settings
) -> None:
    own = connect(private_redis)
    try:
        await own.flushdb()
        assert (await own.info("server"))["redis_version"].split(".")[0] == str(
            redis_servers.server_major_version(settings.redis_url)
        )
        async with full(own, stays=True):
            with pytest.raises(ResponseError, match="maxmemory"):
                await own.set("one more", "x" * 1000)
        await own.set("one more", "x")  # room again
        assert not redis_servers.refused
    finally:
        await own.aclose()
