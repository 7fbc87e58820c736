"""How workers forget what is no longer needed (app/jobs/consumer.py): a finished job, a stream, a user, a
consumer, each only if still empty or idle, checked and removed in one step by a Lua script."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from redis.asyncio import Redis

from app import keys
from app.jobs.protocol import STREAMS_PER_SCRIPT, all_streams, as_text, ask_streams, in_pieces

# A user's interactive stream stays among those blocked on for this long after their last upload.
INTERACTIVE_LINGER_S = 300
DEAD_LETTER_MAXLEN = 100_000

# KEYS: the dead-letter stream, the jobs' streams, then their predictions' markers. ARGV: the group, the number
# of streams, DEAD_LETTER_MAXLEN, the number of the dead-letter entry's fields and values (0: none) and those,
# then for each stream the number of its entries and their ids. 1 if the dead-letter entry went on.
# A script, not a MULTI: a Redis at its maxmemory refuses every command queued in a MULTI, so the workers could
# not acknowledge, delete and so free the jobs of a full Redis (found in review). XACK, XDEL and DEL need no
# memory; the dead-letter entry does, and comes first, as a script's first write is the one a full Redis
# refuses: then it is left out (its job is logged), not the rest.
ACKNOWLEDGE = """
local streams, dead = tonumber(ARGV[2]), tonumber(ARGV[4])
local kept = 0
if dead > 0 then
  local added = redis.pcall('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', unpack(ARGV, 5, 4 + dead))
  if type(added) == 'string' then kept = 1 end
end
local at = 5 + dead
for i = 1, streams do
  local last = at + tonumber(ARGV[at])
  redis.call('XACK', KEYS[1 + i], ARGV[1], unpack(ARGV, at + 1, last))
  redis.call('XDEL', KEYS[1 + i], unpack(ARGV, at + 1, last))
  at = last + 1
end
for i = 2 + streams, #KEYS, 1000 do
  redis.call('DEL', unpack(KEYS, i, math.min(i + 999, #KEYS)))
end
return kept
"""

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
# pending (atomic: a worker that reads meanwhile keeps its own). Deleting 10 consumers on each of 1,000 streams
# held Redis 25 ms (measured): SWEPT_PER_CALL streams a call. PCALL: Redis 6.2 counts XGROUP DELCONSUMER among
# the commands that need memory, so a full Redis refused it, and the error came out of the worker's look for
# dead workers' jobs, logged as unexpected, the worker pausing a second; the consumer goes at a sweep with room.
SWEPT_PER_CALL = 100
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
        redis.pcall('XGROUP', 'DELCONSUMER', stream, ARGV[1], consumer.name)
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
    streams = await all_streams(redis)
    await ask_streams(redis, FORGET_IDLE_CONSUMERS, streams, keys.WORKERS_GROUP, keep, *live, per_call=SWEPT_PER_CALL)


async def forget_if_empty(redis: Redis, streams: list[str]) -> None:
    for stream in streams:
        if stream.startswith(keys.bulk_jobs("")):
            await redis.eval(FORGET_IF_EMPTY, 2, keys.BULK_USERS, stream, stream.rsplit(":", 1)[1])


async def acknowledge(
    redis: Redis, entries: dict[str, list[Any]], prediction_ids: Iterable[str], dead: dict[Any, Any] | None = None
) -> bool:
    """Acknowledge and delete these entries of each stream (finished entries must not accumulate), forget the
    markers of their predictions, and with `dead` put that entry on the dead-letter stream first, in one step.
    False if `dead` was left out, Redis being full."""
    ids = [part for stream_ids in entries.values() for part in (len(stream_ids), *stream_ids)]
    markers = [keys.queued_marker(p) for p in prediction_ids]
    record = [part for pair in (dead or {}).items() for part in pair]
    names = [keys.DEAD_JOBS, *entries, *markers]
    args = [keys.WORKERS_GROUP, len(entries), DEAD_LETTER_MAXLEN, len(record), *record, *ids]
    return bool(await redis.eval(ACKNOWLEDGE, len(names), *names, *args))
