"""Which inference backend each worker runs, and why (INFERENCE_BACKEND=auto's evidence): from its heartbeat to
/health/ready and the admin page; a heartbeat of an older worker, without these fields, still counts."""

from __future__ import annotations

import json
import time

from redis.asyncio import Redis

from app import keys
from app.jobs.producer import live_workers
from app.jobs.protocol import Heartbeat
from app.settings import Settings
from tests.helpers import beat, forget_worker
from tests.page_helpers import HX, Client

CHOICE = (
    "openvino-2026.4.1-bf16: the fastest backend that agrees with TensorFlow (keras-3.15.1 53.0 images/s"
    " (reference); openvino-2026.4.1-bf16 121.0 images/s, top-1 100%, top-5 99.3%: agrees; 28 probe images,"
    " batch 16, measured 2026-05-01 08:20 UTC, cached)"
)


def chosen_worker(settings: Settings) -> Heartbeat:
    return Heartbeat(
        name="auto-chosen",
        model_id=settings.model_id,
        started_at=time.time(),
        backend="openvino",
        engine="openvino-2026.4.1-bf16",
        backend_choice=CHOICE,
    )


async def test_readiness_shows_each_workers_backend_and_why(
    client: Client, no_worker: None, redis: Redis, settings: Settings
) -> None:
    await beat(redis, chosen_worker(settings), ttl=30)
    try:
        response = await client.get("/health/ready")
    finally:
        await forget_worker(redis, "auto-chosen")
    assert response.status_code == 200
    assert response.json()["backends"] == [
        {"worker": "auto-chosen", "backend": "openvino", "engine": "openvino-2026.4.1-bf16", "choice": CHOICE}
    ]


async def test_the_admin_page_shows_each_workers_backend_and_why(
    admin_browser: Client, no_worker: None, redis: Redis, settings: Settings
) -> None:
    await beat(redis, chosen_worker(settings), ttl=30)
    try:
        pages = [
            (await admin_browser.get(path, headers=headers)).text
            for path, headers in (("/admin", {}), ("/admin/status", HX))
        ]
    finally:
        await forget_worker(redis, "auto-chosen")
    for page in pages:
        assert '<th scope="col">Backend</th>' in page
        assert '<td class="nowrap">openvino-2026.4.1-bf16</td>' in page
        choices = page.split('id="backend-choices"', 1)[1].split("</ul>", 1)[0]
        assert "<li><strong>auto-chosen</strong>: openvino-2026.4.1-bf16: the fastest backend that agrees" in choices
        assert "top-1 100%, top-5 99.3%: agrees" in choices


async def test_a_heartbeat_without_the_backend_fields_still_counts(
    client: Client, admin_browser: Client, no_worker: None, redis: Redis, settings: Settings
) -> None:
    # As a worker of the previous version writes it (app.jobs.consumer.Consumer.beat), and one field from the future.
    old = {"name": "old-worker", "model_id": settings.model_id, "started_at": time.time(), "future_field": 1}
    await redis.set(keys.heartbeat("old-worker"), json.dumps(old), ex=30)
    await redis.zadd(keys.WORKER_NAMES, {"old-worker": time.time() + 30})
    try:
        (worker,) = await live_workers(redis)
        ready = (await client.get("/health/ready")).json()
        page = (await admin_browser.get("/admin/status", headers=HX)).text
    finally:
        await forget_worker(redis, "old-worker")
    assert (worker.name, worker.backend, worker.engine, worker.backend_choice) == ("old-worker", "", "", "")
    assert ready["status"] == "ready"
    assert ready["backends"] == [{"worker": "old-worker", "backend": "", "engine": "", "choice": ""}]
    assert '<td class="nowrap">?</td>' in page
    assert "<li><strong>old-worker</strong>: (not reported by this worker&#39;s version)</li>" in page
