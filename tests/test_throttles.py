"""Limits counted in Redis (app/throttles.py) that bound what one person can make Redis hold."""

from __future__ import annotations

import dataclasses

import pytest
from litestar.exceptions import TooManyRequestsException
from redis.asyncio import Redis

from app.settings import Settings
from app.throttles import Throttle


async def test_sign_ins_to_many_accounts_from_one_address_are_bounded(redis: Redis, settings: Settings) -> None:
    """Found auditing Redis: each sign-in, once signed out, keeps its revoked token in Redis for the token's life
    (125 bytes a key, measured on Redis 6.2), and sign-ins were bounded per account and address only. One
    address holding 450 accounts (a day of its sign-ups) could sign in and out as fast as the password hashing
    allows (2 threads at 133 ms: 15 a second a web process), 1.3 million keys, 160 MB of Redis a web process
    (derived). Now 100 a window per address: 9,600 keys a day, 1.2 MB."""
    throttle = Throttle(redis, dataclasses.replace(settings, sign_ins_per_address=3))
    address = "198.51.100.7"
    for n in range(3):  # right or wrong, each counts
        limits = throttle.sign_in_limits(f"many-{n}@example.com", address)
        await throttle.settle(limits, await throttle.take(limits), failed=False)
    with pytest.raises(TooManyRequestsException) as refused:
        await throttle.take(throttle.sign_in_limits("many-3@example.com", address))
    assert "sign-ins from this address" in refused.value.detail
    assert int((refused.value.headers or {})["Retry-After"]) > 1
    # Another address is not held back by this one.
    await throttle.take(throttle.sign_in_limits("many-3@example.com", "198.51.100.8"))
