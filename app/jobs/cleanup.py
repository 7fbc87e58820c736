"""How workers forget what is no longer needed (app/jobs/consumer.py): a stream, a user, a consumer, each only
if still empty or idle, checked and removed in one step by a Lua script."""

from __future__ import annotations

import time

from redis.asyncio import Redis

from app import keys
from app.jobs.protocol import STREAMS_PER_SCRIPT, all_streams, as_text, ask_streams, in_pieces

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
# KEYS: streams; ARGV: the group, then the consumers to keep. Remove each other consumer that has nothing
# pending (atomic: a worker that reads meanwhile keeps its own).
FORGET_IDLE_CONSUMERS = """
local keep = {}
for i = 2, #ARGV do keep[ARGV[i]] = true end
for _, stream in ipairs(KEYS) do
  local consumers = redis.pcall('XINFO', 'CONSUMERS', stream, ARGV[1])
  if not consumers.err then
    for _, fields in ipairs(consumers) do
      local consumer = {}
      for i = 1, #fields, 2 do consumer[fields[i]] = fields[i + 1] end
      if consumer.pending == 0 and not keep[consumer.name] then
        redis.call('XGROUP', 'DELCONSUMER', stream, ARGV[1], consumer.name)
      end
    end
  end
end
"""
# KEYS: JOB_USERS, then the users' streams; ARGV: the quiet time, then the users. Forget each user quiet
# since then, and their stream, if it is empty (atomic: an upload meanwhile keeps them).
FORGET_IF_QUIET = """
for i = 2, #KEYS do
  local user = ARGV[i]
  local score = redis.call('ZSCORE', KEYS[1], user)
  if score and tonumber(score) < tonumber(ARGV[1]) and redis.call('XLEN', KEYS[i]) == 0 then
    redis.call('ZREM', KEYS[1], user)
    redis.call('DEL', KEYS[i])
  end
end
"""


async def forget_quiet_users(redis: Redis) -> None:
    quiet_since = time.time() - INTERACTIVE_LINGER_S
    users = [as_text(u) for u in await redis.zrangebyscore(keys.JOB_USERS, "-inf", quiet_since)]
    for piece in in_pieces(users, STREAMS_PER_SCRIPT):
        streams = [keys.jobs(user) for user in piece]
        await redis.eval(FORGET_IF_QUIET, 1 + len(piece), keys.JOB_USERS, *streams, quiet_since, *piece)


async def forget_gone_consumers(redis: Redis, keep: str) -> None:
    """Remove from each stream's group the consumers with nothing pending whose worker is gone (no live
    heartbeat), but `keep`: each worker process ever started would otherwise stay one, on every stream it read."""
    live = {as_text(name) for name in await redis.zrangebyscore(keys.WORKER_NAMES, time.time(), "+inf")}
    await ask_streams(redis, FORGET_IDLE_CONSUMERS, await all_streams(redis), keys.WORKERS_GROUP, keep, *live)


async def forget_if_empty(redis: Redis, streams: list[str]) -> None:
    for stream in streams:
        if stream.startswith(keys.bulk_jobs("")):
            await redis.eval(FORGET_IF_EMPTY, 2, keys.BULK_USERS, stream, stream.rsplit(":", 1)[1])
