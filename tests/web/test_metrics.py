"""/metrics in Prometheus format: requests by route, queue depth, workers, batch sizes, inference time."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import httpx
import pytest
from litestar import Litestar
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis
from tortoise import connections
from tortoise.exceptions import DBConnectionError

from app import keys
from app.jobs.protocol import BATCH_SIZE_BUCKETS, Heartbeat, connect
from app.models import Prediction, Status, User
from app.settings import Settings
from app.web.metrics import may_read_metrics
from tests import samples
from tests.conftest import CountingClassifier
from tests.helpers import beat, eventually, forget_worker, hold_feed_lock


def samples_of(text: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()) if k in {"path", "le", "method"})
            found[f"{sample.name}{{{labels}}}"] = sample.value
    return found


async def test_metrics(client: httpx.AsyncClient, auth: dict[str, str], worker: CountingClassifier) -> None:
    for seed in (1000, 1001):
        response = await client.post("/api/predictions", headers=auth, files={"file": ("a.jpg", samples.photo(seed))})
        assert response.status_code == 200

    async def settled() -> bool:
        metrics = samples_of((await client.get("/metrics")).text)
        return metrics["app_queue_depth{}"] == 0 and metrics["app_batch_size_count{}"] == worker.calls

    await eventually(settled, what="the last batch to be acknowledged and counted")
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    metrics = samples_of(response.text)
    assert metrics["app_queue_depth{}"] == 0
    assert metrics["app_workers_live{}"] == 1
    assert metrics["app_batch_size_count{}"] == worker.calls
    assert metrics["app_batch_size_bucket{le=+Inf}"] == worker.calls
    assert metrics["app_inference_seconds_count{}"] == worker.calls
    assert metrics["app_inference_seconds_sum{}"] > 0
    requests = [v for k, v in metrics.items() if k.startswith("app_requests_total{") and "path=/api/predictions" in k]
    assert requests and sum(requests) >= 2


def test_who_may_read_the_metrics(settings: Settings) -> None:
    assert may_read_metrics(settings, "127.0.0.1", "") and may_read_metrics(settings, "::1", "")
    assert not may_read_metrics(settings, "203.0.113.5", "")
    with_token = dataclasses.replace(settings, metrics_token="s3cret-token")
    assert may_read_metrics(with_token, "203.0.113.5", "Bearer s3cret-token")
    assert not may_read_metrics(with_token, "127.0.0.1", "")  # with a token set, the token is the key
    assert not may_read_metrics(with_token, "203.0.113.5", "Bearer wrong")


async def test_metrics_are_not_public(app: Litestar, client: httpx.AsyncClient) -> None:
    """From another machine (the session's app is running: `client`), /metrics answers 401."""
    transport = httpx.ASGITransport(app=app, client=("203.0.113.5", 40000))  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as outsider:
        response = await outsider.get("/metrics")
    assert response.status_code == 401 and "app_queue_depth" not in response.text
    assert (await client.get("/metrics")).status_code == 200  # the test client is on loopback


async def test_cache_hits_are_counted_in_the_metrics(
    client: httpx.AsyncClient, auth: dict[str, str], worker: CountingClassifier
) -> None:
    """Users are not told that an upload was answered from the cache; operators see how often it happens."""
    image = samples.photo(987_654, fmt="PNG")  # lossless: no other test's image shares its hash
    before = samples_of((await client.get("/metrics")).text)["app_cache_hits_total{}"]
    first = await client.post("/api/predictions", headers=auth, files={"file": ("a.png", image)})
    assert first.status_code == 200
    again = await client.post("/api/predictions", headers=auth, files={"file": ("b.png", image)})
    assert again.status_code == 200 and "cached" not in again.json()
    after = samples_of((await client.get("/metrics")).text)["app_cache_hits_total{}"]
    # At least: the feeder may answer work an earlier test left waiting from the cache meanwhile (the count
    # itself is checked exactly in tests/test_predictions.py).
    assert after >= before + 1


async def test_the_backlog_counts_images_waiting_in_the_database(
    client: httpx.AsyncClient, auth: dict[str, str], no_worker: None, redis: Redis
) -> None:
    user = await User.get(email=(await client.get("/api/users/me", headers=auth)).json()["email"])
    await hold_feed_lock(redis)  # the feeder stays out: the rows keep waiting
    try:
        before = samples_of((await client.get("/metrics")).text)
        rows = [
            await Prediction.create(
                user=user, image_sha256=f"{i:064x}", image_path="x", model_name="resnet50", model_weights="random"
            )
            for i in range(2)
        ]
        after = samples_of((await client.get("/metrics")).text)
    finally:
        await redis.delete(keys.FEED_LOCK)
        await Prediction.filter(id__in=[r.id for r in rows]).update(status=Status.FAILED)
    assert after["app_backlog{}"] == before["app_backlog{}"] + 2 == after["app_queue_depth{}"] + 2


async def test_only_the_workers_of_this_apps_model_count_and_the_others_say_their_model(
    client: httpx.AsyncClient, no_worker: None, redis: Redis, settings: Settings
) -> None:
    """Found in review: /metrics counted every live worker as this app's, a worker of another model too (it
    leaves this app's jobs: no capacity of it), with nothing to tell them apart."""
    counts = [1] + [0] * len(BATCH_SIZE_BUCKETS)  # one batch, in the first bucket
    mine = Heartbeat("mine", settings.model_id, time.time(), batches=1, images=1, batch_size_counts=counts)
    other = Heartbeat("other", "another-model", time.time(), batches=1, images=7, batch_size_counts=counts)
    assert other.model_id != settings.model_id
    for worker in (mine, other):
        await beat(redis, worker, ttl=30)
    try:
        text = (await client.get("/metrics")).text
    finally:
        for worker in (mine, other):
            await forget_worker(redis, worker.name)
    metrics = samples_of(text)
    assert metrics["app_workers_live{}"] == 1
    assert (metrics["app_batch_size_count{}"], metrics["app_batch_size_sum{}"]) == (1, 1)
    images = {
        (s.labels["worker"], s.labels["model"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "app_worker_images_total"
    }
    assert images == {("mine", settings.model_id): 1, ("other", "another-model"): 7}


REDIS_FIGURES = ("app_queue_depth{}", "app_backlog{}", "app_workers_live{}", "app_cache_hits_total{}")


async def test_with_redis_down_the_metrics_still_answer_without_its_figures(
    client: httpx.AsyncClient, app: Litestar
) -> None:
    """Found in review: /metrics answered 503 as a whole while Redis was down, which hid the request
    metrics (latency, errors) just when an operator needs them. Now 200, with `app_redis_up 0`, the
    database's figures, and none of the figures from Redis (left out, not zero)."""
    assert (await client.get("/api/labels", params={"q": "cat"})).status_code == 200  # a request to count
    services = app.state.services
    working = services.redis
    services.redis = connect("redis://127.0.0.1:1/0")  # nothing listens there
    try:
        response = await client.get("/metrics")
    finally:
        await services.redis.aclose()
        services.redis = working
    assert response.status_code == 200, response.text
    metrics = samples_of(response.text)
    assert metrics["app_redis_up{}"] == 0 and metrics["app_database_up{}"] == 1
    assert "app_waiting{}" in metrics
    assert not [name for name in REDIS_FIGURES if name in metrics]
    assert any(k.startswith("app_requests_total{") and "path=/api/labels" in k for k in metrics)
    again = samples_of((await client.get("/metrics")).text)
    assert again["app_redis_up{}"] == 1 and all(name in again for name in REDIS_FIGURES)


async def test_with_the_database_down_the_metrics_still_answer_without_its_figures(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Likewise the database: `app_database_up 0`, Redis's figures, and no `app_waiting` or `app_backlog`
    (which counts the images waiting there)."""

    async def database_away(*args: Any, **kwargs: Any) -> None:
        raise DBConnectionError("the database went away")

    monkeypatch.setattr(connections.get("default"), "execute_query", database_away)
    response = await client.get("/metrics")
    monkeypatch.undo()
    assert response.status_code == 200, response.text
    metrics = samples_of(response.text)
    assert metrics["app_database_up{}"] == 0 and metrics["app_redis_up{}"] == 1
    assert "app_waiting{}" not in metrics and "app_backlog{}" not in metrics
    assert "app_queue_depth{}" in metrics and "app_workers_live{}" in metrics
