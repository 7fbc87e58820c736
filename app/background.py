"""Background loops (heartbeats, claim keeping, stale-job sweeps) that stop when told to.

Stopping sets a flag as well as cancelling the task: a cancellation that lands inside a Redis call can
come out as an ordinary error, which these loops tolerate, and it must not leave the loop running and
its owner waiting for it forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from redis.asyncio.lock import Lock
from redis.exceptions import LockError

log = logging.getLogger(__name__)

# While an action keeps failing, a warning this often: seen (a worker whose heartbeat fails is invisible to
# the web app), without a line every round.
WARN_EVERY = 60.0


class Every:
    """Run `action` every `seconds` in a task of its own until `stop()`; an error in one round is
    logged (a warning at the first and every WARN_EVERY seconds while it lasts) and the next round goes ahead."""

    def __init__(self, seconds: float, action: Callable[[], Awaitable[object]], name: str, wait_first: bool = False):
        self._done = asyncio.Event()
        self._task = asyncio.create_task(self._run(seconds, action, wait_first), name=name)

    async def _run(self, seconds: float, action: Callable[[], Awaitable[object]], wait_first: bool) -> None:
        if wait_first:
            await self._pause(seconds)
        name, failures, warned_at = self._task.get_name(), 0, -math.inf
        while not self._done.is_set():
            try:
                await action()
            except Exception as exc:
                failures += 1
                # Stopping: a cancellation that came out as an error is no failure worth a warning.
                if self._done.is_set() or time.monotonic() - warned_at < WARN_EVERY:
                    log.debug("%s: round failed", name, exc_info=True)
                else:
                    warned_at = time.monotonic()
                    log.warning("%s: round failed (%d in a row): %r", name, failures, exc)
            else:
                if failures:
                    log.info("%s: working again after %d failed rounds", name, failures)
                failures, warned_at = 0, -math.inf
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
