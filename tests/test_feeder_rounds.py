"""The feeder's rounds: busy only while it has something to do (images waiting for the streams, or
collections whose windows it tops up), not while synchronous uploads are in flight on their streams."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from litestar import Litestar
from redis.asyncio import Redis
from tortoise.transactions import in_transaction

from app import collections, feeder, keys
from app.feeder import _has_work
from app.models import Collection, CollectionStatus, Prediction, Status, User
from tests.helpers import hold_feed_lock, renewed, unique_email


async def test_synchronous_uploads_in_flight_leave_the_feeder_idle(
    client: httpx.AsyncClient, auth: dict[str, str], no_worker: None, redis: Redis
) -> None:
    user = await User.get(email=(await client.get("/api/users/me", headers=auth)).json()["email"])
    common: dict[str, Any] = {
        "user": user,
        "image_sha256": "c" * 64,
        "image_path": "x",
        "model_name": "m",
        "model_weights": "random",
    }
    await hold_feed_lock(redis)  # the app's feeder stays out: the rows keep waiting
    await Collection.exclude(status=CollectionStatus.DONE).update(status=CollectionStatus.DONE)  # others' leftovers
    rows = []
    try:
        assert not await _has_work()
        rows.append(await Prediction.create(**common, enqueued_at=datetime.now(UTC)))
        assert not await _has_work()  # in flight: the workers' business, not the feeder's
        rows.append(await Prediction.create(**common))
        assert await _has_work()  # waiting in the database: the feeder's
        await Prediction.filter(id=rows[-1].id).update(status=Status.FAILED)
        collection = await Collection.create(user=user, total=1, status=CollectionStatus.CLASSIFYING)
        assert await _has_work()  # its window is topped up as results come
        await Collection.filter(id=collection.id).update(status=CollectionStatus.DONE)
        assert not await _has_work()
    finally:
        await redis.delete(keys.FEED_LOCK)
        await Prediction.filter(id__in=[r.id for r in rows]).update(status=Status.FAILED)


async def test_a_long_round_keeps_the_feed_lock_and_never_deletes_another_feeders(
    client: httpx.AsyncClient, no_worker: None, redis: Redis, app: Litestar, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: the lock lapsed under a round longer than FEED_LOCK_S (another process then fed the same
    rows), and the round's end deleted whichever process's lock was there."""
    # Renewed every 2 s: a stalled machine has 4 s to renew it (a 1 s lock lapsed in a stall of 0.7 s).
    lock_s = 6
    started, ending, ended = asyncio.Event(), asyncio.Event(), asyncio.Event()
    has_work = feeder._has_work

    async def slow(services: Any) -> int:
        if await redis.pttl(keys.FEED_LOCK) > lock_s * 1000:  # a round begun before FEED_LOCK_S was changed
            return 0
        started.set()
        await ending.wait()
        return 0

    async def after_the_round() -> bool:  # what the round asks once it has let its lock go (if still its own)
        if ending.is_set():
            ended.set()
        return await has_work()

    monkeypatch.setattr(feeder, "FEED_LOCK_S", lock_s)
    monkeypatch.setattr(feeder, "feed", slow)
    monkeypatch.setattr(feeder, "_has_work", after_the_round)
    # Its next round now: it may be waiting out a longer pause that an earlier test set (up to 30 s).
    app.state.services.feeder.nudge()
    try:
        await asyncio.wait_for(started.wait(), 60)  # the app's feeder, in a round
        await renewed(redis, keys.FEED_LOCK)
        await redis.set(keys.FEED_LOCK, "another process's")  # as if it had lapsed and been taken
    finally:
        ending.set()
    await asyncio.wait_for(ended.wait(), 60)  # the round has ended
    assert await redis.get(keys.FEED_LOCK) == b"another process's"
    await redis.delete(keys.FEED_LOCK)


async def test_a_done_collection_is_not_counted_again(client: httpx.AsyncClient) -> None:
    """GET /api/collections and every history page counted every image of each collection listed, done or not
    (10,000 a collection, up to 100 a page: a million rows a request). Its counts are now stored as it is done,
    and read after: here its images are gone by then, and its progress still says what they came to."""
    user = await User.create(email=unique_email(), password_hash="x")
    common: dict[str, Any] = {"user": user, "image_path": "", "model_name": "m", "model_weights": "random"}
    # At once: the app's own feeder, seeing it classifying with no images yet, finished it counting none.
    async with in_transaction():
        collection = await Collection.create(user=user, total=300, status=CollectionStatus.CLASSIFYING)
        await Prediction.bulk_create(
            Prediction(
                collection=collection,
                entry=i,
                image_sha256=f"{i:064x}",
                status=Status.FAILED if i % 10 == 0 else Status.DONE,
                **common,
            )
            for i in range(300)
        )
    await feeder._finish_collections()
    await Prediction.filter(collection_id=collection.id).delete()  # nothing left to count
    done = await Collection.get(id=collection.id)
    assert done.status == CollectionStatus.DONE
    assert await collections.progress(done) == {"total": 300, "queued": 0, "done": 270, "failed": 30}
