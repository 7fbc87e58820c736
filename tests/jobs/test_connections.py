"""The Redis client every process makes (app/jobs/protocol.py's `connect`), on the test Redis."""

from __future__ import annotations

import asyncio
from uuid import uuid4

from app.jobs.protocol import REDIS_CONNECTIONS, connect
from app.settings import Settings


async def test_more_commands_at_once_than_connections_wait_for_one(settings: Settings) -> None:
    """Found by bench/hostile_load.py: past 100 commands at once, redis-py's pool raised MaxConnectionsError,
    which the app answers 503 ("a service this depends on is unavailable"): 477 of a flood's 600 uploads got
    it, though each sender kept within its bound of requests open. A command past the pool's connections now
    waits for one."""
    redis = connect(settings.redis_url)
    try:
        nothing, count = f"test-nothing-{uuid4().hex}", REDIS_CONNECTIONS + 20
        # Each holds its connection for 0.2 s: more at once than the pool has.
        waited = await asyncio.gather(*(redis.blpop([nothing], timeout=0.2) for _ in range(count)))
        assert waited == [None] * count
    finally:
        await redis.aclose()
