"""How workers forget what is no longer needed (app/jobs/consumer.py): a stream, a user, a consumer, each only
if still empty or idle, checked and removed in one step by a Lua script."""

from __future__ import annotations

import time

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from app import keys
from app.jobs.protocol import all_streams, as_text

# A user's interactive stream stays among those blocked on for this long after their last upload.
INTERACTIVE_LINGER_S = 300

# Drop a user from the bulk set once their stream is empty, and the stream itself (its group with it): Redis
# would otherwise keep one for every user ever seen. Atomic: an enqueue after it makes the stream and adds
# the user again, and the worker that meets the stream without a group makes one from its first entry.
FORGET_IF_EMPTY = """
if redis.call('XLEN', KEYS[2]) == 0 then
  redis.call('SREM', KEYS[1], ARGV[1])
  redis.call('DEL', KEYS[2])
end
"""
# Remove a consumer only if it still has nothing pending (atomic: a worker that reads meanwhile keeps it).
FORGET_IF_IDLE = """
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) == 0 then
  redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
end
"""
# The same for an interactive stream, once its user has been quiet a while.
FORGET_IF_QUIET = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) < tonumber(ARGV[2]) and redis.call('XLEN', KEYS[2]) == 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('DEL', KEYS[2])
end
"""


async def forget_quiet_users(redis: Redis) -> None:
    quiet_since = time.time() - INTERACTIVE_LINGER_S
    for user in await redis.zrangebyscore(keys.JOB_USERS, "-inf", quiet_since):
        user_id = as_text(user)
        await redis.eval(FORGET_IF_QUIET, 2, keys.JOB_USERS, keys.jobs(user_id), user_id, quiet_since)


async def forget_gone_consumers(redis: Redis, keep: str) -> None:
    """Remove from each stream's group the consumers with nothing pending whose worker is gone (no live
    heartbeat), but `keep`: each worker process ever started would otherwise stay one, on every stream it read."""
    live = {as_text(name) for name in await redis.zrangebyscore(keys.WORKER_NAMES, time.time(), "+inf")}
    for stream in await all_streams(redis):
        try:
            consumers = await redis.xinfo_consumers(stream, keys.WORKERS_GROUP)
        except ResponseError:  # no such stream or group (yet): no consumers
            continue
        for consumer in consumers:
            name = as_text(consumer["name"])
            if consumer["pending"] == 0 and name not in live and name != keep:
                await redis.eval(FORGET_IF_IDLE, 1, stream, keys.WORKERS_GROUP, name)


async def forget_if_empty(redis: Redis, streams: list[str]) -> None:
    for stream in streams:
        if stream.startswith(keys.bulk_jobs("")):
            await redis.eval(FORGET_IF_EMPTY, 2, keys.BULK_USERS, stream, stream.rsplit(":", 1)[1])
