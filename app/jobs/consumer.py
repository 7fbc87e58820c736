"""The worker side of the Redis protocol: read batches fairly, take over dead workers' jobs, keep a slow
batch claimed, acknowledge, dead-letter, and announce the worker with a heartbeat."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, cast

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from app import keys
from app.background import Every
from app.jobs.cleanup import acknowledge, forget_gone_consumers, forget_if_empty, forget_quiet_users
from app.jobs.pending import DECLINED, idle_entries
from app.jobs.protocol import (
    BULK_PART,
    JOBS_PER_COMMAND,
    Heartbeat,
    all_streams,
    as_text,
    bulk_streams,
    ensure_group,
    find_waiting,
    in_pieces,
    interactive_lengths,
    interactive_streams,
    missing_group,
    with_pending,
)
from app.jobs.results import publish_result
from app.models import Status, mark_failed
from app.outages import DEPENDENCY_ERRORS

log = logging.getLogger(__name__)

Entry = tuple[bytes, dict[bytes, bytes]]
# When nothing waits anywhere, block this long on the interactive streams of the latest BLOCK_ON users, then
# look everywhere again (a user new since the last look, or an earlier one, is seen then). Blocking on all of
# 10,000 users' streams cost an idle worker 0.15 of a core (measured), on 1,000 0.02.
IDLE_BLOCK_MS = 100
BLOCK_ON = 1000
# KEYS: the worker's heartbeat, WORKER_NAMES; ARGV: the heartbeat, its TTL, the worker, when it expires. A script,
# not a MULTI, which a full Redis refuses whole: HEARTBEAT_TTL after Redis filled every worker looked gone as they
# drained it (/health/ready, /metrics, uploads told no worker runs). A script's first write, EXPIRE, needs no memory,
# and Redis lets a script that has written finish: a full Redis takes a heartbeat (a few hundred bytes a worker).
BEAT = """
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
"""
# How often pending entries are checked for dead workers' jobs.
RECLAIM_EVERY = 1.0

# How often the consumers of workers gone (each worker process is one) are removed from the groups.
SWEEP_CONSUMERS_EVERY = 60.0
# How often every user's stream is looked at for jobs outside JOBS_WAITING (a web process of the version before
# enqueues without it, in a rolling deploy), from the first look on; the other looks ask the waiting ones only.
FIND_WAITING_EVERY = 10.0


@dataclass(frozen=True)
class Delivery:
    stream: str
    entry_id: bytes
    fields: dict[bytes, bytes]


@dataclass(frozen=True)
class Limits:
    max_batch: int
    claim_idle_ms: int
    max_deliveries: int


class Consumer:
    """One worker's membership of the consumer group, on every jobs stream."""

    def __init__(self, redis: Redis, name: str, limits: Limits, model_id: str = "") -> None:
        """`model_id`: the worker's; the jobs held for another model are not taken over here."""
        self.redis = redis
        self.model_id = model_id
        self.name = name
        self.limits = limits
        self._last_reclaim = 0.0
        self._last_sweep = time.monotonic()
        self._last_find = -FIND_WAITING_EVERY
        # Where the next read starts, for each kind of stream (interactive, bulk): its own, or one kind's
        # count would move the other's start (and the same streams would be passed over every time).
        self._turns = {"interactive": 0, "bulk": 0}
        self._reads = 0
        self._first = limits.max_batch  # of the batch being read, its part for interactive jobs (`_read`)
        self.reclaimed = False

    async def next_batch(self, ahead: bool = False) -> list[Delivery]:
        """Jobs of dead workers first (once a second; `reclaimed` says so), else whatever is waiting. `ahead`:
        read while the batch before is inferred, never blocking (`_read`), `top_up` filling it after."""
        taken = await self._or_new_groups(self._reclaim())
        self.reclaimed = bool(taken)
        return taken or await self._or_new_groups(self._read(wait=not ahead, ahead=ahead))

    async def top_up(self, have: int) -> list[Delivery]:
        """The rest of a batch read ahead that holds `have` jobs: what is waiting now, never blocking."""
        return await self._or_new_groups(self._read(wait=False, have=have))

    async def _or_new_groups(self, reading: Awaitable[list[Delivery]]) -> list[Delivery]:
        try:
            return await reading
        except ResponseError as exc:
            if not missing_group(exc):
                raise
            # A new stream, or Redis restarted without persistence: make the missing groups.
            for stream in await all_streams(self.redis):
                await ensure_group(self.redis, stream)
            return []

    async def _xread(self, streams: list[str], count: int, block: int | None = None) -> list[Delivery]:
        """XREADGROUP; a stream new since the workers last looked gets its group and is read again, so the
        jobs of the reads before this one in a batch are not dropped with an error."""
        for attempt in (1, 2):
            try:
                response = cast(
                    "list[tuple[bytes, list[Entry]]] | None",
                    await self.redis.xreadgroup(
                        keys.WORKERS_GROUP, self.name, dict.fromkeys(streams, ">"), count=count, block=block
                    ),
                )
                break
            except ResponseError as exc:
                if "UNBLOCKED" in str(exc):  # Redis 7: a stream blocked on was deleted (its user forgotten)
                    return []
                if not missing_group(exc):
                    raise
                if attempt == 2:  # made again without its group meanwhile (emptied, removed, added to): read next
                    return []  # time; the error delivered nothing, and the reads before it in the batch stand
                streams = [stream for stream in streams if await ensure_group(self.redis, stream)]
                if not streams:
                    return []
        return [
            Delivery(stream.decode() if isinstance(stream, bytes) else stream, entry_id, fields)
            for stream, entries in response or []
            for entry_id, fields in entries
            if fields
        ]

    async def _read(self, wait: bool = True, ahead: bool = False, have: int = 0) -> list[Delivery]:
        """Up to MAX_BATCH jobs less the `have` in hand: interactive first, then bulk work, each in turns across
        users, so bulk work fills the batches, has a part of them (BULK_PART) however many interactive jobs wait,
        and no one user starves another. `ahead`: while someone uploads (an interactive stream), the interactive
        part only: the rest is read once the batch before is inferred, so an upload meanwhile comes first.
        With nothing waiting and `wait`, a short block for what comes; no other delay."""
        size = self.limits.max_batch
        if not have:  # a new batch: its part for interactive jobs
            self._reads += 1
            self._first = size - (size // BULK_PART or int(self._reads % BULK_PART == 0))  # BULK_PART says why
        interactive = await interactive_lengths(self.redis)
        # Turns go to the streams holding jobs: taken among every user's (a user's stays 5 minutes after their
        # last upload), 100 quiet users' cut a busy one's batches to 1 job (measured).
        waiting = list(interactive.lengths)
        deliveries = await self._take_turns("interactive", waiting, max(0, self._first - have))
        if ahead and interactive.users:
            return deliveries
        full = have + len(deliveries) >= self._first
        if room := size - have - len(deliveries):
            deliveries += await self._take_turns("bulk", await bulk_streams(self.redis), room)
        if full and (room := size - have - len(deliveries)):  # no bulk work took the part held for it
            deliveries += await self._take_turns("interactive", waiting, room)
        if deliveries or not wait:
            return deliveries
        if interactive.users and (streams := await interactive_streams(self.redis, newest=BLOCK_ON)):
            # One call to block on them all: with more than 8 streams, one job of each that has one.
            count = max(1, min(size, JOBS_PER_COMMAND) // len(streams))
            return await self._xread(streams, count, block=IDLE_BLOCK_MS)
        await asyncio.sleep(IDLE_BLOCK_MS / 1000)
        return []

    async def _take_turns(self, kind: str, streams: list[str], room: int) -> list[Delivery]:
        """Up to `room` jobs, an equal share from each stream. COUNT is per stream: with more streams
        than room, one each from `room` of them, the next read of this kind starting past them. Read in rounds
        of about JOBS_PER_COMMAND jobs (see there); a stream found empty drops out, and the room it left is
        shared among the others in the next round (a quiet user's stream still in the set takes none of it)."""
        if not streams:
            return []
        turn = self._turns[kind] % len(streams)
        chosen = (streams[turn:] + streams[:turn])[:room]
        self._turns[kind] = turn + len(chosen)  # the next read starts past these: every stream in turn
        taken: list[Delivery] = []
        while chosen and len(taken) < room:
            left = room - len(taken)
            chosen = chosen[:left]  # one job each at least: no more streams than jobs to take
            count = max(1, min(left // len(chosen), JOBS_PER_COMMAND // len(chosen)))
            got: list[Delivery] = []
            for streams_read in in_pieces(chosen):  # past 8 streams, one from each per read
                got += await self._xread(streams_read, count)
            taken += got
            per_stream = Counter(delivery.stream for delivery in got)
            chosen = [stream for stream in chosen if per_stream[stream] == count]  # the others ran out
        return taken

    async def _reclaim(self) -> list[Delivery]:
        """Take over jobs idle longer than CLAIM_IDLE (their worker died); dead-letter repeat offenders."""
        now = time.monotonic()
        if now - self._last_reclaim < RECLAIM_EVERY:
            return []
        self._last_reclaim = now
        await forget_quiet_users(self.redis)
        if now - self._last_find >= FIND_WAITING_EVERY:
            self._last_find = now
            await find_waiting(self.redis)
        if now - self._last_sweep >= SWEEP_CONSUMERS_EVERY:
            self._last_sweep = now
            await forget_gone_consumers(self.redis, self.name)
        claimed: list[Delivery] = []
        streams = [*(await interactive_lengths(self.redis)).lengths, *await bulk_streams(self.redis)]
        for stream in await with_pending(self.redis, streams):  # a job in flight is on a stream holding jobs
            taken, alone = await self._reclaim_stream(stream, self.limits.max_batch - len(claimed), not claimed)
            claimed += taken
            if alone or len(claimed) >= self.limits.max_batch:
                break
        return claimed

    async def _reclaim_stream(self, stream: str, count: int, first: bool) -> tuple[list[Delivery], bool]:
        """The stream's jobs to take over, and whether the one job taken must be run alone. A job taken over
        before and lost again may be one that kills workers (a segfault, the OOM killer): it is taken alone,
        and only when nothing else is (`first`), so that it uses up its own deliveries and no batch-mate's."""
        idle, limit = self.limits.claim_idle_ms, self.limits.max_deliveries
        try:  # held for another model's workers: given up on once none took it in MAX_DELIVERIES x CLAIM_IDLE
            found = await idle_entries(self.redis, stream, self.model_id, count, idle, limit * idle)
        except ResponseError as exc:
            if not missing_group(exc):
                raise
            await ensure_group(self.redis, stream)  # new since the last look: nothing of it is pending
            return [], False
        pending, declined = found.pending, found.declined
        exhausted = [p["message_id"] for p in pending if p["times_delivered"] >= limit] + declined
        if exhausted:
            # Claimed first: if two workers look at once, only the one that wins the claim dead-letters it.
            mine = cast(
                "list[bytes]",
                await self.redis.xclaim(
                    stream, keys.WORKERS_GROUP, self.name, min_idle_time=idle, message_ids=exhausted, justid=True
                ),
            )
            for entry_id in mine:
                try:
                    await self._dead_letter(stream, entry_id, entry_id in declined)
                except DEPENDENCY_ERRORS as exc:  # still pending: dead-lettered at a later look
                    log.warning("could not dead-letter job %s of %s (%r)", entry_id, stream, exc)
        # Lost with its worker before (or on its last try, with MAX_DELIVERIES=2): suspected of killing workers.
        suspected = min(2, limit - 1)
        suspects = [p["message_id"] for p in pending if suspected <= p["times_delivered"] < limit]
        alone = bool(suspects) and first
        retry = suspects[:1] if alone else [p["message_id"] for p in pending if p["times_delivered"] < suspected]
        if not retry:
            return [], False
        claimed: list[Entry] = []
        for piece in in_pieces(retry):  # a few at a time (see JOBS_PER_COMMAND)
            claimed += cast(
                "list[Entry]",
                await self.redis.xclaim(stream, keys.WORKERS_GROUP, self.name, min_idle_time=idle, message_ids=piece),
            )
        log.info("reclaimed %d jobs of %s from dead or stuck workers", len(claimed), stream)
        # An entry deleted meanwhile comes back with no fields: just acknowledge it.
        await self.ack([Delivery(stream, entry_id, {}) for entry_id, fields in claimed if not fields])
        taken = [Delivery(stream, entry_id, fields) for entry_id, fields in claimed if fields]
        return taken, alone and bool(taken)  # another worker may have won the claim

    async def _dead_letter(self, stream: str, entry_id: bytes, declined: bool) -> None:
        """Its predictions failed first, then its dead-letter entry and its acknowledgement, together: a
        database that refuses the first leaves it pending for a later look, with nothing written twice.
        `declined`: held for workers of its model, none of which took it."""
        entries = cast("list[Entry]", await self.redis.xrange(stream, min=entry_id, max=entry_id))
        fields: dict[bytes, bytes] = entries[0][1] if entries else {}
        error = f"Could not be classified after {self.limits.max_deliveries} attempts"
        if declined:
            seconds = self.limits.max_deliveries * self.limits.claim_idle_ms / 1000
            error = f"No worker of model {as_text(fields.get(b'model', b'?'))} took it in {seconds:g} s"
        ids = [x for x in fields.get(b"id", b"").decode(errors="replace").split(",") if x]
        ids += [x for x in fields.get(b"also", b"").decode(errors="replace").split(",") if x]
        log.error("dead-lettering job %s of %s (predictions %s)", entry_id, stream, ids)
        dead_fields: dict[Any, Any] = {k: v for k, v in fields.items() if k != b"pixels"}
        dead_fields.update({b"entry": entry_id, b"stream": stream, b"error": error.encode()})
        failed = await mark_failed(ids, error)
        if not await acknowledge(self.redis, {stream: [entry_id]}, ids, dead=dead_fields):
            log.warning(
                "Redis is full: job %s of %s dead-lettered without its entry on %s", entry_id, stream, keys.DEAD_JOBS
            )
        await forget_if_empty(self.redis, [stream])
        for prediction_id in failed:
            await publish_result(self.redis, prediction_id, Status.FAILED)

    async def ack(self, deliveries: list[Delivery], prediction_ids: Sequence[str] = ()) -> None:
        """Acknowledge and delete (finished entries must not accumulate), and drop the predictions'
        queued markers, in one step (`cleanup.acknowledge`)."""
        by_stream = _by_stream(deliveries)
        if not by_stream and not prediction_ids:
            return
        await acknowledge(self.redis, by_stream, prediction_ids)
        await forget_if_empty(self.redis, list(by_stream))

    def keep_claimed(self, deliveries: list[Delivery]) -> Every:
        """While a batch is in hand, keep claiming its entries (JUSTID: no delivery is counted), so a
        slow batch is never mistaken for a dead worker's and classified twice."""
        by_stream = _by_stream(deliveries)

        async def claim() -> None:
            for stream, entry_ids in by_stream.items():
                await self.redis.xclaim(
                    stream, keys.WORKERS_GROUP, self.name, min_idle_time=0, message_ids=entry_ids, justid=True
                )

        return Every(self.limits.claim_idle_ms / 3000, claim, name="keep-claimed", wait_first=True)

    async def decline(self, deliveries: list[Delivery], model_id: str) -> None:
        """Leave these jobs of `model_id` (not this worker's) unacknowledged, held for a worker of that model
        (JUSTID: no delivery is counted), which takes them over after CLAIM_IDLE."""
        for stream, entry_ids in _by_stream(deliveries).items():
            holder = DECLINED + model_id
            await self.redis.xclaim(
                stream, keys.WORKERS_GROUP, holder, min_idle_time=0, message_ids=entry_ids, justid=True
            )

    async def beat(self, heartbeat: Heartbeat, ttl: int) -> None:
        names, expires = [keys.heartbeat(heartbeat.name), keys.WORKER_NAMES], time.time() + ttl
        await self.redis.eval(BEAT, 2, *names, json.dumps(asdict(heartbeat)), ttl, heartbeat.name, expires)

    async def leave(self) -> None:
        """The worker stopping: gone from the live ones at once, not when its heartbeat expires. Not a MULTI,
        which a full Redis refuses whole: these need no memory."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.delete(keys.heartbeat(self.name))
            pipe.zrem(keys.WORKER_NAMES, self.name)
            await pipe.execute()


def _by_stream(deliveries: list[Delivery]) -> dict[str, list[Any]]:
    by_stream: dict[str, list[Any]] = {}
    for delivery in deliveries:
        by_stream.setdefault(delivery.stream, []).append(delivery.entry_id)
    return by_stream
