"""Background loops (heartbeats, claim keeping, stale-job sweeps) that stop when told to.

Stopping sets a flag as well as cancelling the task: a cancellation that lands inside a Redis call can
come out as an ordinary error, which these loops tolerate, and it must not leave the loop running and
its owner waiting for it forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from redis.asyncio.lock import Lock
from redis.exceptions import LockError

log = logging.getLogger(__name__)


class Every:
    """Run `action` every `seconds` in a task of its own until `stop()`; an error in one round is
    logged and the next round goes ahead."""

    def __init__(self, seconds: float, action: Callable[[], Awaitable[object]], name: str, wait_first: bool = False):
        self._done = asyncio.Event()
        self._task = asyncio.create_task(self._run(seconds, action, wait_first), name=name)

    async def _run(self, seconds: float, action: Callable[[], Awaitable[object]], wait_first: bool) -> None:
        if wait_first:
            await self._pause(seconds)
        while not self._done.is_set():
            try:
                await action()
            except Exception:
                log.debug("%s: round failed", self._task.get_name(), exc_info=True)
            await self._pause(seconds)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._done.wait(), seconds)

    async def stop(self) -> None:
        self._done.set()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@contextlib.asynccontextmanager
async def renewing(lock: Lock, name: str) -> AsyncIterator[None]:
    """While the block runs, renew an acquired redis-py lock every third of its time, so that a long block
    does not let it lapse; then release it, if it is still ours (lost meanwhile, it may be another's)."""
    assert lock.timeout is not None  # a lock with no timeout needs no renewing
    renewal = Every(lock.timeout / 3, lock.reacquire, name=name, wait_first=True)
    try:
        yield
    finally:
        await renewal.stop()
        with contextlib.suppress(LockError):
            await lock.release()
