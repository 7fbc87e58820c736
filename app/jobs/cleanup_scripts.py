"""The Lua scripts with which workers forget what is no longer needed (app/jobs/consumer.py): a stream, a user,
a consumer, each only if still empty or idle, checked and removed in one step."""

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
