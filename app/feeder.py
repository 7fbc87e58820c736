"""The feeder: work that waits in the database (async jobs, collection items) goes onto the bulk streams
a window at a time, so Redis holds a bounded amount of it whatever users send.

Each source of waiting work (one user's async jobs; one collection) has at most FEED_WINDOW jobs on a
stream, and all of them together WINDOWS_IN_ALL windows; as results come in, the feeder tops each window
up, with the pixels this process kept as it accepted the images, or else decoding their stored originals
again in the sandbox. Users take turns at the workers (see app/jobs/consumer.py), interactive uploads
first. Every web process runs a feeder; a Redis lock lets one of them feed at a time. It also starts, or
takes over, the reading of collections whose archives are still being read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from redis.asyncio.lock import Lock
from redis.exceptions import LockError
from tortoise.functions import Count

from app import images, keys
from app.background import renewing
from app.collections import read_archive, reading_lock_of
from app.jobs import producer
from app.jobs.protocol import Job
from app.jobs.results import publish_result
from app.models import Collection, CollectionStatus, Prediction, Status, mark_failed
from app.outages import dependency_down, redis_full
from app.predictions import earlier_result
from app.services import Services
from app.settings import FEED_WINDOWS_IN_ALL

log = logging.getLogger(__name__)
# How often the feeder looks when work is in flight, and when there is none; between two rounds, at least
# ROUND_GAP_S (results wake it: a burst of them, or another process's, would otherwise run round after round).
BUSY_ROUND_S = 0.25
IDLE_ROUND_S = 2.0
ROUND_GAP_S = 0.05
# After a failed round (Redis full or down), a pause that doubles up to the longest, before the next.
FAILED_ROUND_S = 1.0
MAX_FAILED_ROUND_S = 10.0
FEED_LOCK_S = 30  # renewed while a round runs
# The streams hold at most this many windows of work in all (~38 MB at the default FEED_WINDOW), shared
# equally by the sources that have any: a window per source alone grew Redis with the accounts at work.
WINDOWS_IN_ALL = FEED_WINDOWS_IN_ALL
# A source's part of a round: none of its images is started past it (they wait for the next round), so one
# person's images that are slow to decode hold the others' feeding up for this long and one decode more.
SOURCE_ROUND_S = 1.0


@dataclass(frozen=True)
class Source:
    """Waiting work of one user: their async jobs (collection None) or one of their collections."""

    user_id: int
    collection_id: Any


def _source(row: dict[str, Any]) -> Source:
    return Source(row["user_id"], row["collection_id"])


async def _counts(**where: Any) -> dict[Source, int]:
    rows = await (
        Prediction.filter(status=Status.QUEUED, **where)
        .group_by("user_id", "collection_id")
        .annotate(n=Count("id"))
        .values("user_id", "collection_id", "n")
    )
    return {_source(row): row["n"] for row in rows}


def _of(source: Source) -> Any:
    query = Prediction.filter(status=Status.QUEUED, user_id=source.user_id)
    if source.collection_id is None:
        return query.filter(collection_id__isnull=True)
    return query.filter(collection_id=source.collection_id)


def waiting_of(source: Source) -> Any:
    """A source's images waiting in the database, oldest first: by the index on (status, user_id,
    collection_id, created_at), which holds them together and in order. SQLite read them by the person's
    index instead, every image they ever sent, each round. Ordered by collection_id too (one value here) so
    that PostgreSQL sees the index's order for a person's single images (`IS NULL` does not fix a column)."""
    return _of(source).filter(enqueued_at__isnull=True).order_by("collection_id", "created_at")


async def _finish_from_cache(services: Services, ids: list[str], cached: dict[str, Any]) -> None:
    await Prediction.filter(id__in=ids, status=Status.QUEUED).update(
        **cached, status=Status.DONE, cached=True, finished_at=datetime.now(UTC)
    )
    for prediction_id in ids:
        await publish_result(services.redis, prediction_id, Status.DONE)


async def _job(services: Services, first: Prediction, ids: list[str]) -> Job | None:
    """The job for one image (several predictions of it), with the pixels this process kept as it accepted
    the image, else decoded again from its stored original; None when it was finished otherwise (from the
    cache, or failed because the original is unreadable)."""
    settings = services.settings
    kept = [pixels for i in ids if (pixels := services.kept.take(i)) is not None]
    cached = await earlier_result(services, first.image_sha256, first.user_id)  # type: ignore[attr-defined]
    if cached is not None:
        await _finish_from_cache(services, ids, cached)
        return None
    if kept:  # decoded as it was accepted, by this process
        return Job(ids[0], first.image_sha256, settings.model_id, kept[0], also=tuple(ids[1:]))
    try:
        data = await asyncio.to_thread(Path.read_bytes, settings.upload_dir / first.image_path)
        image = await services.decoder.check(data, owner=first.user_id)  # type: ignore[attr-defined]
    except (OSError, images.ImageRejected) as exc:
        for prediction_id in await mark_failed(ids, f"The stored original could not be read again: {exc}"):
            await publish_result(services.redis, prediction_id, Status.FAILED)
        return None
    return Job(ids[0], image.sha256, settings.model_id, image.pixels, also=tuple(ids[1:]))


async def _in_turns(
    services: Services, images: list[list[Prediction]]
) -> tuple[list[Job | BaseException | None], list[str]]:
    """The jobs of a source's images (each image's predictions), or why one failed, and the ids of the
    predictions left for the next round. As many are made at once as the decode pool has processes, so the
    sources fed side by side take turns at it (a source's slow decodes held every other's behind them), and
    none is started past SOURCE_ROUND_S. Every one made, or failed, when this returns: none is still taking
    pixels when they are put back."""
    turns = asyncio.Semaphore(services.settings.decode_processes)
    deadline, later = time.monotonic() + SOURCE_ROUND_S, []

    async def in_turn(same: list[Prediction]) -> Job | None:
        ids = [str(p.id) for p in same]
        async with turns:
            if time.monotonic() > deadline:
                later.extend(ids)
                return None
            return await _job(services, same[0], ids)

    return await asyncio.gather(*(in_turn(same) for same in images), return_exceptions=True), later


async def _feed_source(services: Services, source: Source, room: int) -> int:
    """Put up to `room` more of a source's waiting images on its user's bulk stream, oldest first; the
    same image waiting several times makes one job. How many went on."""
    fed = await waiting_of(source).limit(room)
    by_image: dict[str, list[Prediction]] = defaultdict(list)
    for prediction in fed:
        by_image[prediction.image_sha256].append(prediction)
    ids = [str(p.id) for p in fed]
    # Marked first, so no other round feeds them meanwhile; unmarked again below if this round fails.
    await Prediction.filter(id__in=ids).update(enqueued_at=datetime.now(UTC))
    made: list[Job | None] = []
    enqueued: list[Job] = []
    try:
        results, later = await _in_turns(services, list(by_image.values()))
        made = [job for job in results if not isinstance(job, BaseException)]
        for error in results:
            if isinstance(error, BaseException):
                raise error
        await producer.enqueue_bulk(services.redis, source.user_id, [job for job in made if job is not None], enqueued)
    except Exception:  # Redis down mid-round: back to waiting at once (not after the stale sweep), but
        # not those already on the stream, which would be classified twice
        on_stream = {i for job in enqueued for i in job.prediction_ids}
        back = [i for i in ids if i not in on_stream]
        for job in made:  # their pixels kept again (else every later round would decode them again)
            if job is not None and job.prediction_id not in on_stream:
                services.kept.keep(job.prediction_id, job.pixels)
        await Prediction.filter(id__in=back, status=Status.QUEUED).update(enqueued_at=None)
        raise
    if later:
        await Prediction.filter(id__in=later, status=Status.QUEUED).update(enqueued_at=None)
    return len(fed) - len(later)


async def _finish_collections() -> None:
    """Collections that were classifying and have nothing left queued are done."""
    classifying = await Collection.filter(status=CollectionStatus.CLASSIFYING).values_list("id", flat=True)
    if not classifying:
        return
    busy = await _counts(collection_id__in=list(classifying))
    still = {source.collection_id for source in busy}
    finished = [c for c in classifying if c not in still]
    if finished:
        await Collection.filter(id__in=finished, status=CollectionStatus.CLASSIFYING).update(
            status=CollectionStatus.DONE
        )
        await _count_finished(finished)


async def _count_finished(collection_ids: list[Any]) -> None:
    """Store what done collections' images came to (Collection.done_count, failed_count): they change no more."""
    rows = await (
        Prediction.filter(collection_id__in=collection_ids)
        .group_by("collection_id", "status")
        .annotate(n=Count("id"))
        .values_list("collection_id", "status", "n")
    )
    counts = {(str(collection_id), str(status)): int(n) for collection_id, status, n in rows}
    for collection_id in collection_ids:
        done, failed = (counts.get((str(collection_id), status.value), 0) for status in (Status.DONE, Status.FAILED))
        await Collection.filter(id=collection_id).update(done_count=done, failed_count=failed)


async def _has_work() -> bool:
    """Anything for the next rounds: images waiting for the streams, or collections whose windows must be
    topped up as results come. Not synchronous uploads in flight (on their streams, not the feeder's
    business): polling for them would cost the web process CPU for every upload under load."""
    if await Prediction.filter(status=Status.QUEUED, enqueued_at__isnull=True).exists():
        return True
    return await Collection.filter(status__in=(CollectionStatus.READING, CollectionStatus.CLASSIFYING)).exists()


async def feed(services: Services) -> int:
    """One round: top up every source's window. Returns how many predictions went onto streams."""
    waiting = await _counts(enqueued_at__isnull=True)
    fed: list[int | BaseException] = []
    if waiting:
        in_flight = await _counts(enqueued_at__isnull=False)
        # What the streams hold as Redis counts it, not the rows marked fed. Those include synchronous
        # uploads, and rows whose jobs a restarted Redis lost (until REQUEUE_AFTER hands them back):
        # counted, they held everyone's feeding up for that long.
        room = rooms(services.settings.feed_window, waiting, in_flight, await producer.bulk_depth(services.redis))
        # Side by side, each source's images in turns (`_in_turns`): one after another, a source's slow
        # decodes held every later source's feeding behind them.
        fed = await asyncio.gather(*(_feed_source(services, s, n) for s, n in room.items()), return_exceptions=True)
        for error in fed:
            if isinstance(error, BaseException):
                raise error
    await _finish_collections()
    return sum(n for n in fed if isinstance(n, int))


def rooms(window: int, waiting: dict[Source, int], in_flight: dict[Source, int], held: int) -> dict[Source, int]:
    """How many more jobs each source with work waiting may put on the streams now, which hold `held`: up
    to its window, and its equal share of WINDOWS_IN_ALL windows; those with the fewest in flight first,
    the others in a random order (past WINDOWS_IN_ALL x window sources, the rest wait for another turn),
    while any room is left."""
    budget = WINDOWS_IN_ALL * window
    share = min(window, max(budget // max(len(waiting), 1), 1))
    left, found = budget - held, {}
    # In turns past the budget: in a fixed order, the same sources won every round.
    shuffled = random.sample(list(waiting), len(waiting))
    for source in sorted(shuffled, key=lambda s: in_flight.get(s, 0)):
        room = min(share - in_flight.get(source, 0), waiting[source], left)
        if room > 0:
            found[source] = room
            left -= room
    return found


async def _read(services: Services, listed: Collection, lock: Lock) -> None:
    """`read_archive` of a collection listed as being read, once its lock is taken: read afresh, since another
    process's reader may have finished it in between (its archive removed: read as listed, it was marked
    "could not be read to the end: it is gone"). A dependency out for now (SQLite's write lock held past its
    busy wait, Redis down or full) pauses it: its lock let go, the next round resumes it where it stopped.
    Uncaught, the error ended the task and left the lock held: nobody read on until it lapsed."""
    try:
        collection = await Collection.get_or_none(id=listed.id, status=CollectionStatus.READING)
        if collection is None:
            with contextlib.suppress(LockError):
                await lock.release()
            return
        await read_archive(services, collection, lock)
    except Exception as exc:
        if not (dependency_down(exc) or redis_full(exc)):
            raise
        log.warning("reading of collection %s paused (%r); the next round resumes it", listed.id, exc)
        with contextlib.suppress(Exception):  # Redis down: the lock lapses by itself
            await lock.release()


class Feeder:
    """The feeding loop of one web process, and the archives it is reading."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self._wake = asyncio.Event()
        self._done = asyncio.Event()
        self.reading: dict[str, asyncio.Task[None]] = {}
        self.busy = True
        self._task = asyncio.create_task(self._run(), name="feeder")

    def nudge(self) -> None:
        """New work waits: feed now rather than at the next round."""
        self._wake.set()

    def result_came(self) -> None:
        """A fed job is done: while there is work, top its window up now. A worker faster than the rounds
        otherwise waits for them (OpenVINO on AMX: a batch of 32 in 0.24 s, a round every 0.25 s)."""
        if self.busy:
            self._wake.set()

    async def _run(self) -> None:
        pause = ROUND_GAP_S
        while not self._done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), BUSY_ROUND_S if self.busy else IDLE_ROUND_S)
            self._wake.clear()
            try:
                self.busy = await self._round()
                pause = ROUND_GAP_S
            except Exception as exc:  # a dependency is down or full: try again, less and less often
                pause = min(max(pause * 2, FAILED_ROUND_S), MAX_FAILED_ROUND_S)
                if redis_full(exc):  # no fault of the code's: a traceback each round said there was one
                    log.warning("Redis is full (%r): feeding waits for room; trying again in %g s", exc, pause)
                    # The database's business alone: collections all done stayed "classifying" until room.
                    with contextlib.suppress(Exception):  # the database down as well: the next round tries
                        await _finish_collections()
                else:
                    log.warning("feeding failed; trying again in %g s", pause, exc_info=True)
            await asyncio.sleep(pause)

    async def _round(self) -> bool:
        await self._take_over_reading()
        # Held by one process at a time, renewed while its round runs, released only if still its own.
        lock = self.services.redis.lock(keys.FEED_LOCK, timeout=FEED_LOCK_S, blocking=False)
        if not await lock.acquire():
            return True  # another process is feeding
        async with renewing(lock, "feed-lock"):
            await feed(self.services)
        return await _has_work()

    async def _take_over_reading(self) -> None:
        """Read the collections nobody is reading: new ones, and those of a process that stopped."""
        self.reading = {k: t for k, t in self.reading.items() if not t.done()}
        for collection in await Collection.filter(status=CollectionStatus.READING):
            key = str(collection.id)
            lock = reading_lock_of(self.services, key)
            if key not in self.reading and await lock.acquire():
                self.reading[key] = asyncio.create_task(_read(self.services, collection, lock), name="reading")

    async def stop(self) -> None:
        self._done.set()
        tasks = [self._task, *self.reading.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
