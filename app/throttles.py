"""Limits on how often one account or one address may try something (sign in, sign up), counted in Redis.

A window starts at its first event: SET NX EX creates the counter with its TTL and INCR keeps it (Redis
6.2 has no EXPIRE ... NX). An attempt is checked against every limit and, only if none is used up, counted
against each, in one script: attempts sent at once would otherwise all pass a check made before any of
them was counted, and one refused must count nothing (an address already refused would still lock out the
accounts it names). Past the limit: 429 with Retry-After, until the window ends.

A limit of failures counts an attempt as in flight until it is judged (`settle`), and then as failed or
not: attempts in flight fill the limit as failures would, so wrong passwords sent at once get no more tries
than one after another, but they are not failures. They had been counted as failed until a success gave
them back, so six correct sign-ins sent at once (or a page and the API after four typos) answered 429
"Too many failed sign-ins ... try again in 900 seconds": now the one past the limit is told to try again in
a second, when those in flight are judged.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple
from uuid import uuid4

from litestar.exceptions import TooManyRequestsException
from redis.asyncio import Redis

from app import keys
from app.settings import Settings

SIGN_UP_WINDOW = 3600  # REGISTRATIONS_PER_ADDRESS counts sign-ups per hour
# Longest an attempt counts as in flight: one whose process died meanwhile is never judged. Each attempt has its
# own deadline: kept in one counter whose TTL each attempt set again, one never judged counted for as long as
# others came, a try of the limit gone (found in review).
IN_FLIGHT_TTL = 120
IN_FLIGHT_RETRY = 1  # seconds: a limit filled by attempts in flight frees up as soon as they are judged
# KEYS: the counters, then the attempts in flight of the limits of failures (sorted sets: attempt -> deadline), in
# their order. ARGV: each limit's most, window and 1 for a limit of failures (else 0), then IN_FLIGHT_TTL and
# this attempt's id. Returns {0, 0, 0}, or the used-up limit's index, its TTL, and 1 if attempts in flight fill
# it (else 0). Redis's clock: the same for every web process.
_TAKE = """
local n = (#ARGV - 2) / 3
local ttl, attempt = tonumber(ARGV[#ARGV - 1]), ARGV[#ARGV]
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local in_flight, j = {}, n
for i = 1, n do
  if ARGV[3 * i] == '1' then j = j + 1; in_flight[i] = KEYS[j] end
end
for i = 1, n do
  local used, most = tonumber(redis.call('GET', KEYS[i]) or '0'), tonumber(ARGV[3 * i - 2])
  if used >= most then return {i, redis.call('TTL', KEYS[i]), 0} end
  if in_flight[i] and used + redis.call('ZCOUNT', in_flight[i], '(' .. now, '+inf') >= most then return {i, 0, 1} end
end
for i = 1, n do
  if in_flight[i] then
    redis.call('ZREMRANGEBYSCORE', in_flight[i], '-inf', now)
    redis.call('ZADD', in_flight[i], now + ttl, attempt)
    redis.call('EXPIRE', in_flight[i], ttl)
  else
    redis.call('SET', KEYS[i], 0, 'EX', ARGV[3 * i - 1], 'NX')
    redis.call('INCR', KEYS[i])
  end
end
return {0, 0, 0}
"""
# KEYS: counters and their attempts in flight, in pairs. ARGV: 1 if the attempt failed (else 0), its id, then
# each counter's window. The attempt leaves those in flight and, failed, joins the counter, at once: no moment
# counts it nowhere.
_SETTLE = """
for i = 1, #KEYS / 2 do
  local counter, in_flight = KEYS[2 * i - 1], KEYS[2 * i]
  redis.call('ZREM', in_flight, ARGV[2])
  if ARGV[1] == '1' then
    redis.call('SET', counter, 0, 'EX', ARGV[i + 2], 'NX')
    redis.call('INCR', counter)
  end
end
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
    failures: bool = False  # counts attempts judged failed (`settle`), not every attempt as it is made


class SignInLimits(NamedTuple):
    failed_by_account_address: Limit
    failed_by_address: Limit
    failed_by_account: Limit
    by_account_address: Limit
    by_address: Limit


class Throttle:
    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self._take = redis.register_script(_TAKE)
        self._settle = redis.register_script(_SETTLE)

    def sign_in_limits(self, email: str, address: str) -> SignInLimits:
        """An account's own limits count per address too: counted per account alone, anyone naming one (the
        admin's too) kept its owner out with five wrong passwords a window. Only the bound of all addresses
        together, far higher, stops everyone: it bounds guessing one password from many addresses."""
        settings, address = self.settings, address_key(address)

        def limit(key: str, most: int, what: str, failures: bool = True) -> Limit:
            return Limit(key, most, settings.login_window_seconds, what, failures)

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
            limit(
                keys.sign_ins_account_address(email, address),
                settings.sign_ins_per_account,
                f"sign-ins {here}",
                failures=False,
            ),
            # Each sign-in, signed out, is a revoked token in Redis for a day (125 bytes): bounded per account and
            # address only, one address holding a day of sign-ups' accounts kept 1.3 million of them a web process.
            limit(keys.sign_ins_address(address), settings.sign_ins_per_address, "sign-ins from this address", False),
        )

    def sign_up_limit(self, address: str) -> Limit:
        most = self.settings.registrations_per_address
        return Limit(
            keys.register_throttle_address(address_key(address)), most, SIGN_UP_WINDOW, "sign-ups from this address"
        )

    async def take(self, limits: Sequence[Limit]) -> str:
        """Count one attempt against each of `limits` (in flight, for a limit of failures, until `settle`);
        429, counting nothing, if any is used up. The attempt's id, for `settle`."""
        attempt = uuid4().hex
        names = [limit.key for limit in limits] + [keys.in_flight(limit.key) for limit in limits if limit.failures]
        args = [n for limit in limits for n in (limit.most, limit.window, int(limit.failures))]
        used_up, ttl, in_flight = await self._take(keys=names, args=[*args, IN_FLIGHT_TTL, attempt])
        if not used_up:
            return attempt
        what = limits[used_up - 1].what
        if in_flight:
            raise TooManyRequestsException(
                f"Too many {what}, counting those being checked now; try again in a second",
                headers={"Retry-After": str(IN_FLIGHT_RETRY)},
            )
        retry = max(int(ttl), 1)
        raise TooManyRequestsException(
            f"Too many {what}; try again in {retry} seconds", headers={"Retry-After": str(retry)}
        )

    async def settle(self, limits: Sequence[Limit], attempt: str, failed: bool) -> None:
        """Judge the `attempt` `take` counted as in flight: failed (counted against each limit of failures), or
        not (a success, or a sign-in an outage stopped: counted nowhere)."""
        failures = [limit for limit in limits if limit.failures]
        names = [name for limit in failures for name in (limit.key, keys.in_flight(limit.key))]
        await self._settle(keys=names, args=[int(failed), attempt, *(limit.window for limit in failures)])

    async def forget(self, limit: Limit) -> None:
        await self.redis.delete(limit.key)
