"""Nothing accepted is lost, and a dependency that is down means 503, not 500."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from litestar import Litestar
from redis.asyncio import Redis

from app import keys, recovery
from app.feeder import feed
from app.files import store_original
from app.jobs import producer
from app.jobs.protocol import all_streams, connect
from app.models import Prediction, Status, User
from app.settings import Settings
from app.throttles import Throttle
from tests import samples
from tests.conftest import reset_queue, running_worker
from tests.helpers import eventually, hold_feed_lock


async def on_a_stream(redis: Redis, *prediction_ids: str) -> bool:
    """The job is on a stream (the feeder marks rows enqueued before the decode that makes their jobs)."""
    return all([await producer.has_job(redis, prediction_id) for prediction_id in prediction_ids])


async def test_stale_queued_predictions_go_back_to_the_feeder(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    app: Litestar,
    no_worker: None,
    redis: Redis,
    classifier: Any,
    settings: Settings,
) -> None:
    response = await client.post(
        "/api/predictions", headers=auth, params={"wait": "false"}, files={"file": ("a.jpg", samples.photo(1200))}
    )
    assert response.status_code == 202
    prediction_id = response.json()["id"]
    await eventually(lambda: on_a_stream(redis, prediction_id), what="the feeder to enqueue it")
    services = app.state.services
    long_ago = datetime.now(UTC) - timedelta(days=30)
    await Prediction.filter(id=prediction_id).update(enqueued_at=long_ago)
    assert await recovery.requeue_stale(services) == 0  # old, but its job is still on the stream
    await redis.delete(*await all_streams(redis), keys.queued_marker(prediction_id))  # what a Redis restart does
    assert await recovery.requeue_stale(services) == 0  # not stale: it was just looked at
    await Prediction.filter(id=prediction_id).update(enqueued_at=long_ago)
    assert await recovery.requeue_stale(services) == 1  # handed back to the feeder, which enqueues it again
    await eventually(lambda: producer.has_job(redis, prediction_id), what="the feeder to enqueue it again")
    assert await recovery.requeue_stale(services) == 0  # just enqueued: not again
    async with running_worker(redis, classifier, settings) as worker:
        for _ in range(200):
            if (await Prediction.get(id=prediction_id)).status != Status.QUEUED:
                break
            await asyncio.sleep(0.05)
    prediction = await Prediction.get(id=prediction_id)
    assert prediction.status == Status.DONE and worker.images == 1


async def test_a_missing_original_fails_the_prediction_clearly(
    client: httpx.AsyncClient, auth: dict[str, str], app: Litestar, no_worker: None, redis: Redis
) -> None:
    user = await User.get(email=(await client.get("/api/users/me", headers=auth)).json()["email"])
    prediction = await Prediction.create(
        user=user, image_sha256="f" * 64, image_path="ff/missing.jpg", model_name="resnet50", model_weights="random"
    )
    await feed(app.state.services)
    await prediction.refresh_from_db()
    assert prediction.status == Status.FAILED and "could not be read" in (prediction.error or "")


async def test_redis_down_is_503_not_500(
    client: httpx.AsyncClient, auth: dict[str, str], app: Litestar, settings: Settings
) -> None:
    services = app.state.services
    working, throttle = services.redis, services.throttle
    services.redis = connect("redis://127.0.0.1:1/0")  # nothing listens there
    services.throttle = Throttle(services.redis, settings)
    try:
        upload = await client.post("/api/predictions", headers=auth, files={"file": ("a.jpg", samples.photo(1201))})
        ready = await client.get("/health/ready")
        login = await client.post("/api/auth/login", json={"email": settings.admin_email, "password": "x"})
    finally:
        await services.redis.aclose()
        services.redis, services.throttle = working, throttle
    assert upload.status_code == 503 and upload.headers["Retry-After"]
    assert upload.json()["detail"].startswith("A service this depends on is unavailable")
    assert ready.status_code == 503 and ready.json()["redis"] is False
    assert login.status_code == 503


async def test_lost_collection_items_go_back_on_their_owners_bulk_stream(
    client: httpx.AsyncClient, auth: dict[str, str], app: Litestar, no_worker: None, redis: Redis
) -> None:
    files = [("files", ("a.png", samples.photo(1300, fmt="PNG"))), ("files", ("b.png", samples.photo(1301, fmt="PNG")))]
    response = await client.post("/api/collections", headers=auth, files=files)
    assert response.status_code == 202
    collection_id = response.json()["id"]

    async def both_enqueued() -> bool:
        items = await Prediction.filter(collection_id=collection_id)
        return len(items) == 2 and await on_a_stream(redis, *(str(p.id) for p in items))

    await eventually(both_enqueued, what="the collection's items on a stream")
    items = await Prediction.filter(collection_id=collection_id)
    user_id = items[0].user_id  # type: ignore[attr-defined]
    await redis.delete(keys.bulk_jobs(user_id), *(keys.queued_marker(str(p.id)) for p in items))  # Redis lost them
    long_ago = datetime.now(UTC) - timedelta(days=30)
    await Prediction.filter(id__in=[p.id for p in items]).update(enqueued_at=long_ago)
    assert await recovery.requeue_stale(app.state.services) == 2

    async def back_on_the_bulk_stream() -> bool:
        return await redis.xlen(keys.bulk_jobs(user_id)) == 2

    await eventually(back_on_the_bulk_stream, what="the items back on their owner's bulk stream")
    assert not await redis.exists(keys.jobs(user_id))  # not ahead of anyone's single uploads


async def lost_predictions(user: User, settings: Settings, count: int) -> list[Prediction]:
    """`count` predictions of distinct stored images, put on a stream long ago and lost with it."""
    made = []
    for seed in range(count):
        data = samples.photo(31_000 + seed, (64, 48), "PNG")
        sha256 = hashlib.sha256(data).hexdigest()
        store_original(data, f"{sha256[:2]}/{sha256}.png", settings.upload_dir)
        made.append(
            await Prediction.create(
                user=user,
                image_sha256=sha256,
                image_path=f"{sha256[:2]}/{sha256}.png",
                model_name=settings.model_name,
                model_weights=settings.model_weights,
                enqueued_at=datetime.now(UTC) - timedelta(days=30),
            )
        )
    return made


async def test_one_round_hands_back_every_lost_prediction_a_batch_at_a_time(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    app: Litestar,
    no_worker: None,
    redis: Redis,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found in review: after Redis restarted empty, a round handed back BATCH (200) lost predictions, and
    rounds come a minute apart: 10,000 accepted jobs took 50 minutes to be queued again. A round now goes
    on batch after batch, each read LIMITed to BATCH (bounded memory), and the feeder still puts no more
    than its window on the stream."""
    monkeypatch.setattr(recovery, "BATCH", 3)
    read: list[int] = []
    one_batch = recovery._requeue_batch

    async def counted(*args: Any) -> tuple[int, int]:
        looked, lost = await one_batch(*args)
        read.append(looked)
        return looked, lost

    monkeypatch.setattr(recovery, "_requeue_batch", counted)
    services = app.state.services
    services.settings = dataclasses.replace(settings, feed_window=4)
    user = await User.get(email=(await client.get("/api/users/me", headers=auth)).json()["email"])
    await hold_feed_lock(redis)  # the feeder stays out until they are all handed back
    try:
        made = await lost_predictions(user, settings, 10)
        assert await recovery.requeue_stale(services, until=0) == 3  # past its time: one batch, no more
        assert await recovery.requeue_stale(services) == 7  # the rest in one call
        assert read == [3, 3, 3, 1]  # each batch read at most BATCH rows
        assert await Prediction.filter(id__in=[p.id for p in made], enqueued_at__isnull=True).count() == 10
        await redis.delete(keys.FEED_LOCK)
        stream = keys.bulk_jobs(user.id)

        async def a_window_fed() -> bool:
            return await redis.xlen(stream) >= 4

        await eventually(a_window_fed, seconds=30, what="the feeder to enqueue a window of them again")
        await asyncio.sleep(0.6)  # more feeder rounds: still its window, no more
        assert await redis.xlen(stream) == 4
    finally:
        services.settings = settings
        await redis.delete(keys.FEED_LOCK)
        await reset_queue(redis)
