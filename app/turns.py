"""Fair turns at a bounded resource: at most `slots` holders at once, the rest served in turns across their
owners (users). The decode pool (app/sandbox.py) takes its decodes' slots here."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Hashable


class Turns:
    """At most `slots` decodes at once; those waiting are served in turns across their owners (users), so
    one user's many slow images hold up that user, not everyone queued behind them."""

    def __init__(self, slots: int) -> None:
        self.free = slots
        # Owners in the order they are served (a dict keeps insertion order); each with its waiting calls.
        self.waiting: dict[Hashable, deque[asyncio.Future[None]]] = {}

    @contextlib.asynccontextmanager
    async def slot(self, owner: Hashable) -> AsyncIterator[None]:
        await self._take(owner)
        try:
            yield
        finally:
            self._hand_on()

    async def _take(self, owner: Hashable) -> None:
        if self.free > 0 and not self.waiting:
            self.free -= 1
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting.setdefault(owner, deque()).append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self._hand_on()  # given a slot just as the caller gave up: the next one gets it
            else:
                self._forget(owner, turn)
            raise

    def _hand_on(self) -> None:
        """A slot is free: the next owner in turn gets it, and goes to the back of the line."""
        while self.waiting:
            owner = next(iter(self.waiting))
            queue = self.waiting.pop(owner)
            turn = queue.popleft()
            if queue:
                self.waiting[owner] = queue
            if not turn.done():
                turn.set_result(None)
                return
        self.free += 1

    def _forget(self, owner: Hashable, turn: asyncio.Future[None]) -> None:
        queue = self.waiting.get(owner)
        if queue is not None and turn in queue:
            queue.remove(turn)
            if not queue:
                del self.waiting[owner]
