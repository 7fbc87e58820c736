"""Limits on how often one account or one address may try something (sign in, sign up), counted in Redis.

A window starts at its first event: SET NX EX creates the counter with its TTL and INCR keeps it (Redis
6.2 has no EXPIRE ... NX). Past the limit: 429 with Retry-After, until the window ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from litestar.exceptions import TooManyRequestsException
from redis.asyncio import Redis

from app import keys
from app.settings import Settings

SIGN_UP_WINDOW = 3600  # REGISTRATIONS_PER_ADDRESS counts sign-ups per hour


@dataclass(frozen=True)
class Limit:
    key: str
    most: int
    window: int


class Throttle:
    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings

    def sign_in_limits(self, email: str, address: str) -> tuple[Limit, Limit]:
        """(the account's, the address's) limits on failed sign-ins."""
        window = self.settings.login_window_seconds
        return (
            Limit(keys.login_throttle_account(email), self.settings.login_attempts_per_account, window),
            Limit(keys.login_throttle_address(address), self.settings.login_attempts_per_address, window),
        )

    def sign_up_limit(self, address: str) -> Limit:
        return Limit(keys.register_throttle_address(address), self.settings.registrations_per_address, SIGN_UP_WINDOW)

    async def refuse_past(self, limits: Sequence[Limit], what: str) -> None:
        """429 if any of `limits` is used up."""
        counts = await self.redis.mget([limit.key for limit in limits])
        for limit, count in zip(limits, counts, strict=True):
            if count is not None and int(count) >= limit.most:
                retry = max(int(await self.redis.ttl(limit.key)), 1)
                raise TooManyRequestsException(
                    f"Too many {what}; try again in {retry} seconds", headers={"Retry-After": str(retry)}
                )

    async def count(self, limits: Sequence[Limit]) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            for limit in limits:
                pipe.set(limit.key, 0, ex=limit.window, nx=True)
                pipe.incr(limit.key)
            await pipe.execute()

    async def forget(self, limit: Limit) -> None:
        await self.redis.delete(limit.key)
