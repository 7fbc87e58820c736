"""Results, both sides: the worker publishes each finished job; every web process holds one
subscription (ResultWaiter) that hands each message to the requests awaiting it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio import Redis

from app import keys, labels
from app.jobs.protocol import result_message

log = logging.getLogger(__name__)

Top = Sequence[tuple[int, float]]  # (class index, probability), best first
# A prediction's result: the fields that depend only on the image and the model.
RESULT_FIELDS = ("label", "wnid", "score", "top5", "model_version")


def result_fields(top: Top, model_version: str) -> dict[str, Any]:
    """A prediction's RESULT_FIELDS from the model's top 5."""
    top5 = [
        {"label": labels.LABELS[i].name, "wnid": labels.LABELS[i].wnid, "score": round(float(p), 6)} for i, p in top
    ]
    first = top5[0]
    return {
        "label": first["label"],
        "wnid": first["wnid"],
        "score": first["score"],
        "top5": top5,
        "model_version": model_version,
    }


async def cache_hits(redis: Redis) -> int:
    """How many uploads an earlier result answered (app.predictions.earlier_result; since Redis last
    started empty)."""
    return int(await redis.get(keys.CACHE_HITS) or 0)


async def publish_result(redis: Redis, prediction_id: str, status: str) -> None:
    await redis.publish(keys.RESULTS, result_message(prediction_id, status))


async def publish_done(redis: Redis, finished: dict[str, dict[str, Any] | None], status: str) -> None:
    """Tell the waiters of `finished` predictions (id -> the fields written to its row, or None), in one
    round trip."""
    async with redis.pipeline(transaction=False) as pipe:
        for prediction_id, fields in finished.items():
            pipe.publish(keys.RESULTS, result_message(prediction_id, status, fields))
        await pipe.execute()


class ResultWaiter:
    """One Redis subscription per process that hands finished results to the requests awaiting them.
    It owns `redis`, a client without a command timeout (`connect(url, command_timeout=None)`)."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        # Called for a result no request here awaits (a collection item, an async job): the feeder tops up.
        self.on_other: Callable[[], None] | None = None
        self._waiters: dict[str, list[asyncio.Future[dict[str, Any]]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        # Checked as well as cancelling: a cancellation inside a Redis call may come out as an error.
        self._stopping = False
        # How many times the subscription was made: results published while it was being made again were
        # lost, so a request that saw this change looks at its row (app.predictions.wait).
        self.subscriptions = 0
        self._subscriptions_at: dict[asyncio.Future[dict[str, Any]], int] = {}  # at each `expect`

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="result-waiter")
        # Wait briefly for the subscription so the first requests' results are not missed.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout=5)

    async def stop(self) -> None:
        self._stopping = True
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.redis.aclose()

    def expect(self, prediction_id: str) -> asyncio.Future[dict[str, Any]]:
        """Register interest before the job is enqueued (or the stored result checked), so no message can
        slip between. The future's result is the message: `status`, and `fields` when the worker sent them.
        Each `expect` is paired with a `forget`, which drops the future, answered or not."""
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(prediction_id, []).append(future)
        self._subscriptions_at[future] = self.subscriptions
        return future

    def resubscribed_since(self, future: asyncio.Future[dict[str, Any]]) -> bool:
        """Whether the subscription was made again since `future` was expected: its message may be lost."""
        return self.subscriptions != self._subscriptions_at.get(future, self.subscriptions)

    def expected(self, prediction_id: str) -> asyncio.Future[dict[str, Any]] | None:
        """The future an earlier `expect` registered, until it is forgotten: answered already if its message
        came first (a fast worker can answer while `submit` is still enqueueing)."""
        waiting = self._waiters.get(prediction_id)
        return waiting[0] if waiting else None

    def forget(self, prediction_id: str, future: asyncio.Future[dict[str, Any]]) -> None:
        self._subscriptions_at.pop(future, None)
        waiting = self._waiters.get(prediction_id, [])
        if future in waiting:
            waiting.remove(future)
        if not waiting:
            self._waiters.pop(prediction_id, None)

    def _dispatch(self, data: bytes) -> None:
        try:
            message = json.loads(data)
            prediction_id = str(message["id"])
            if not isinstance(message["status"], str):
                raise TypeError("status")
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring malformed result message %r", data[:200])
            return
        # Kept until their `forget`: a request that registered interest finds its answer even if the
        # message came before it started waiting (it used to read the row back instead).
        waiting = self._waiters.get(prediction_id)
        if not waiting and self.on_other is not None:
            self.on_other()
        for future in waiting or ():
            if not future.done():
                future.set_result(message)

    async def _run(self) -> None:
        while not self._stopping:
            try:
                async with self.redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(keys.RESULTS)
                    self.subscriptions += 1
                    self._ready.set()
                    async for message in pubsub.listen():
                        if message["type"] == "message":
                            self._dispatch(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception:  # Redis went away: resubscribe when it is back.
                log.warning("result subscription lost; retrying in 1 s", exc_info=True)
                await asyncio.sleep(1)
