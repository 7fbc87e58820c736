"""Fair turns at a bounded resource: at most `slots` holders at once, and at most `per_owner` of them one
owner's (a user's); the rest served in turns across their owners. The decode pool (app/sandbox.py) takes
its decodes' slots here, the collections' readings their steps and their open archives
(app/collections.py), the CSV downloads their pages (app/exports.py), and the web's queries their database
connections (app/db_turns.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, deque
from collections.abc import AsyncIterator, Hashable

NO_ONE = object()  # no owner waiting may take a slot


class Turns:
    """At most `slots` holders at once, `per_owner` of them (all of them if not given) one owner's; those
    waiting are served in turns across their owners, so one user's many slow images (or collections) hold
    up that user, not everyone queued behind them."""

    def __init__(self, slots: int, per_owner: int | None = None) -> None:
        self.free = slots
        self.per_owner = per_owner or slots
        self.held: Counter[Hashable] = Counter()
        # Owners in the order they are served (a dict keeps insertion order); each with its waiting calls.
        self.waiting: dict[Hashable, deque[asyncio.Future[None]]] = {}

    @contextlib.asynccontextmanager
    async def slot(self, owner: Hashable) -> AsyncIterator[None]:
        await self._take(owner)
        try:
            yield
        finally:
            self._give_back(owner)

    async def _take(self, owner: Hashable) -> None:
        # Slots left free are no waiting owner's to take (each is at its share): this one may.
        if self.free > 0 and self.held[owner] < self.per_owner and owner not in self.waiting:
            self._hold(owner)
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting.setdefault(owner, deque()).append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self._give_back(owner)  # given a slot just as the caller gave up: the next one gets it
            else:
                self._forget(owner, turn)
            raise

    def _hold(self, owner: Hashable) -> None:
        self.free -= 1
        self.held[owner] += 1

    def _give_back(self, owner: Hashable) -> None:
        self.free += 1
        self.held[owner] -= 1
        if self.held[owner] <= 0:
            del self.held[owner]
        self._hand_on()

    def _hand_on(self) -> None:
        """Free slots go to the owners next in turn, each then to the back of the line; an owner holding its
        share keeps its place until one of its slots is given back."""
        while self.free > 0:
            owner = next((o for o in self.waiting if self.held[o] < self.per_owner), NO_ONE)
            if owner is NO_ONE:  # not None: a caller may name no owner (None), and be waiting
                return
            queue = self.waiting.pop(owner)
            turn = queue.popleft()
            if queue:
                self.waiting[owner] = queue
            if not turn.done():
                turn.set_result(None)
                self._hold(owner)

    def _forget(self, owner: Hashable, turn: asyncio.Future[None]) -> None:
        queue = self.waiting.get(owner)
        if queue is not None and turn in queue:
            queue.remove(turn)
            if not queue:
                del self.waiting[owner]
