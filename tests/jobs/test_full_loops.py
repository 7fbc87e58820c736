"""The web process's background loops (the feeder, the requeue of lost predictions) on a full Redis 6.2 (the
module's own, tests/jobs/conftest.py): they wait for room, and say so in a line, not with a traceback."""

from __future__ import annotations

import dataclasses
import logging

import httpx
import pytest
from litestar import Litestar
from redis.asyncio import Redis

from app import keys, recovery
from app.feeder import Feeder
from app.models import Collection, CollectionStatus, Prediction, Status, User
from app.services import Services
from tests.helpers import eventually, hold_feed_lock, unique_email
from tests.jobs.conftest import full


def on(redis: Redis, app: Litestar) -> Services:
    """The app's services, but Redis: `redis`."""
    return dataclasses.replace(app.state.services, redis=redis)


def records(caplog: pytest.LogCaptureFixture, logger: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == logger and r.levelno >= logging.WARNING]


async def test_a_full_redis_has_the_feeder_wait_saying_so_without_a_traceback(
    redis62: Redis, app: Litestar, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Found auditing a full Redis: each failed round (every 10 s at most, each web process) logged 'feeding
    failed' with a traceback, as for a fault of the code's, though a full Redis is a state the app expects."""
    async with full(redis62, stays=True):
        feeder = Feeder(on(redis62, app))
        try:

            async def logged() -> bool:
                return bool(records(caplog, "app.feeder"))

            await eventually(logged, what="a failed round logged")
        finally:
            await feeder.stop()
    [record] = records(caplog, "app.feeder")[:1]
    assert "Redis is full" in record.getMessage() and record.exc_info is None


async def test_a_full_redis_has_the_requeue_wait_saying_so_without_a_traceback(
    redis62: Redis, app: Litestar, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    async with full(redis62, stays=True):
        await recovery._requeue_round(on(redis62, app), every=5)
    [record] = records(caplog, "app.recovery")
    assert "Redis is full" in record.getMessage() and record.exc_info is None


async def test_a_full_redis_does_not_hold_collections_all_done_classifying(
    redis62: Redis, redis: Redis, app: Litestar, client: httpx.AsyncClient
) -> None:
    """Found auditing a full Redis: a collection was marked done only in a feeding round, which cannot take its
    lock while Redis is full; one whose images were all classified stayed "classifying" until there was room."""
    user = await User.create(email=unique_email(), password_hash="x")
    collection = await Collection.create(user=user, total=1, status=CollectionStatus.CLASSIFYING)
    await Prediction.create(
        user=user,
        collection=collection,
        entry=0,
        image_sha256="0" * 64,
        status=Status.DONE,
        image_path="",
        model_name="m",
        model_weights="random",
    )
    await hold_feed_lock(redis)  # the app's own feeder (room in its Redis) waits
    try:
        async with full(redis62, stays=True):
            feeder = Feeder(on(redis62, app))
            try:

                async def done() -> bool:
                    return (await Collection.get(id=collection.id)).status == CollectionStatus.DONE

                await eventually(done, what="the collection done")
            finally:
                await feeder.stop()
    finally:
        await redis.delete(keys.FEED_LOCK)
