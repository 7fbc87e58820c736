"""Which of a stream's pending jobs a worker looks at to take over or give up on: those idle past CLAIM_IDLE
(their worker died or is stuck), and those a worker left for another model's workers that none took."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from app import keys
from app.jobs.protocol import as_text

# With a model id, the consumer that holds the jobs a worker left for one of that model (Consumer.decline).
DECLINED = "declined-for:"


@dataclass(frozen=True)
class Idle:
    """`pending`: entries idle past CLAIM_IDLE (XPENDING's details), oldest first, held by a worker or for this
    worker's model. `declined`: held for another model's workers, none of which took them in `give_up_ms`."""

    pending: list[dict[str, Any]]
    declined: list[bytes]


def held_for_other(consumer: str, model_id: str) -> bool:
    return consumer.startswith(DECLINED) and consumer != DECLINED + model_id


def _oldest_first(entries: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    return sorted(entries, key=lambda p: tuple(int(n) for n in as_text(p["message_id"]).split("-")))[:count]


async def idle_entries(redis: Redis, stream: str, model_id: str, count: int, idle_ms: int, give_up_ms: int) -> Idle:
    """Up to `count` of each kind. Each holder is asked apart (XPENDING's consumer filter; IDLE is Redis 6.2's),
    so entries held for another model, however many, never hide a dead worker's behind them. Those are not
    taken here (that would use up their deliveries before a worker of their model came) but given up on."""
    holders = [as_text(c["name"]) for c in (await redis.xpending(stream, keys.WORKERS_GROUP))["consumers"]]
    if not holders:
        return Idle([], [])
    async with redis.pipeline(transaction=False) as pipe:
        for holder in holders:
            idle = give_up_ms if held_for_other(holder, model_id) else idle_ms
            pipe.xpending_range(stream, keys.WORKERS_GROUP, "-", "+", count, consumername=holder, idle=idle)
        replies: list[list[dict[str, Any]]] = await pipe.execute()
    pending: list[dict[str, Any]] = []
    declined: list[dict[str, Any]] = []
    for holder, entries in zip(holders, replies, strict=True):
        (declined if held_for_other(holder, model_id) else pending).extend(entries)
    return Idle(_oldest_first(pending, count), [p["message_id"] for p in _oldest_first(declined, count)])
