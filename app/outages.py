"""The exceptions that mean a dependency (Redis, the database) is down, not that the code is wrong: the web
app answers them with 503 and Retry-After, the worker waits and retries."""

from __future__ import annotations

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from tortoise.exceptions import DBConnectionError, OperationalError

# Redis at its `maxmemory` refuses writes: full for now, not down (and never a 500).
FULL_ERRORS: tuple[type[BaseException], ...] = (OutOfMemoryError,)
# How Redis 6.2 (the embedded default) reports a write a script made that a full Redis refused: a script error
# quoting the OOM reply, which redis-py raises as a plain ResponseError (Redis 7 answers OOM itself).
SCRIPT_FULL = "-OOM command not allowed"
DEPENDENCY_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    DBConnectionError,
    ConnectionError,
)
try:  # asyncpg is there with PostgreSQL
    import asyncpg

    DEPENDENCY_ERRORS += (asyncpg.CannotConnectNowError, asyncpg.ConnectionDoesNotExistError)
except ImportError:  # pragma: no cover
    pass


def database_busy(exc: BaseException) -> bool:
    """SQLite's write lock held by another connection for longer than its busy timeout (5 s): the database is
    busy for now, not down and not wrong. Its other errors (a bad statement) are OperationalErrors too."""
    return isinstance(exc, OperationalError) and "database is locked" in str(exc)


def dependency_down(exc: BaseException) -> bool:
    """Redis or the database is down or busy for now (what the web app answers with 503)."""
    return isinstance(exc, DEPENDENCY_ERRORS) or database_busy(exc)


def redis_full(exc: BaseException) -> bool:
    """Redis refused a write for memory: at its `maxmemory`, full for now (a 503), not down nor wrong."""
    return isinstance(exc, FULL_ERRORS) or (isinstance(exc, ResponseError) and SCRIPT_FULL in str(exc))
