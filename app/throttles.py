"""Limits on how often one account or one address may try something (sign in, sign up), counted in Redis.

A window starts at its first event: SET NX EX creates the counter with its TTL and INCR keeps it (Redis
6.2 has no EXPIRE ... NX). An attempt is checked against every limit and, only if none is used up, counted
against each, in one script: attempts sent at once would otherwise all pass a check made before any of
them was counted, and one refused must count nothing (an address already refused would still lock out the
accounts it names). Past the limit: 429 with Retry-After, until the window ends.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from litestar.exceptions import TooManyRequestsException
from redis.asyncio import Redis

from app import keys
from app.settings import Settings

SIGN_UP_WINDOW = 3600  # REGISTRATIONS_PER_ADDRESS counts sign-ups per hour
_GIVE_BACK = "if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('DECR', KEYS[1]) end return 0"
# KEYS: the counters; ARGV: each one's most, then window. Returns 0, or the used-up limit's index and TTL.
_TAKE = """
for i, key in ipairs(KEYS) do
  if tonumber(redis.call('GET', key) or '0') >= tonumber(ARGV[2 * i - 1]) then
    return {i, redis.call('TTL', key)}
  end
end
for i, key in ipairs(KEYS) do
  redis.call('SET', key, 0, 'EX', ARGV[2 * i], 'NX')
  redis.call('INCR', key)
end
return {0, 0}
"""


def address_key(address: str) -> str:
    """Who an address counts as: an IPv6 host has a whole /64 to send from, so its network; an IPv4
    address written as IPv6 is that IPv4 address; anything unparsable as it is."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv4Address):
        return address
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))


@dataclass(frozen=True)
class Limit:
    key: str
    most: int
    window: int
    what: str  # what it counts, as a 429 says: "Too many <what>"


class SignInLimits(NamedTuple):
    failed_by_account_address: Limit
    failed_by_address: Limit
    failed_by_account: Limit
    by_account_address: Limit


class Throttle:
    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self._take = redis.register_script(_TAKE)

    def sign_in_limits(self, email: str, address: str) -> SignInLimits:
        """An account's own limits count per address too: counted per account alone, anyone naming one (the
        admin's too) kept its owner out with five wrong passwords a window. Only the bound of all addresses
        together, far higher, stops everyone: it bounds guessing one password from many addresses."""
        settings, address = self.settings, address_key(address)

        def limit(key: str, most: int, what: str) -> Limit:
            return Limit(key, most, settings.login_window_seconds, what)

        failed, here = "failed sign-ins", "to this account from this address"
        return SignInLimits(
            limit(
                keys.login_throttle_account_address(email, address),
                settings.login_attempts_per_account,
                f"{failed} {here}",
            ),
            limit(
                keys.login_throttle_address(address), settings.login_attempts_per_address, f"{failed} from this address"
            ),
            limit(
                keys.login_throttle_account(email),
                settings.login_failures_per_account_all,
                f"{failed} to this account from all addresses together",
            ),
            # Right or wrong: each costs a password hash (133 ms here, on threads every sign-in shares) and,
            # once signed out, a revoked token kept in Redis for its life. Uncounted, one account signing in
            # and out in a loop kept those threads and grew Redis for as long as it went on.
            limit(keys.sign_ins_account_address(email, address), settings.sign_ins_per_account, f"sign-ins {here}"),
        )

    def sign_up_limit(self, address: str) -> Limit:
        most = self.settings.registrations_per_address
        return Limit(
            keys.register_throttle_address(address_key(address)), most, SIGN_UP_WINDOW, "sign-ups from this address"
        )

    async def take(self, limits: Sequence[Limit]) -> None:
        """Count one attempt against each of `limits`; 429, counting nothing, if any is used up."""
        args = [n for limit in limits for n in (limit.most, limit.window)]
        used_up, ttl = await self._take(keys=[limit.key for limit in limits], args=args)
        if used_up:
            retry = max(int(ttl), 1)
            raise TooManyRequestsException(
                f"Too many {limits[used_up - 1].what}; try again in {retry} seconds",
                headers={"Retry-After": str(retry)},
            )

    async def give_back(self, limits: Sequence[Limit]) -> None:
        """Uncount an attempt that turned out not to count (a sign-in that succeeded, or that an outage
        stopped); a window that ended meanwhile is left gone (DECR would make a counter without a TTL)."""
        for limit in limits:
            await self.redis.eval(_GIVE_BACK, 1, limit.key)

    async def forget(self, limit: Limit) -> None:
        await self.redis.delete(limit.key)
