from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from uuid import uuid4

import httpx
import pytest
from litestar import Litestar
from redis.asyncio import Redis

from app import keys, queue
from app.settings import Settings
from app.worker.loop import Worker
from tests.integration.page_helpers import Client, log_in_page, sign_up_page
from tests.live import live_server


@pytest.fixture(autouse=True)
async def _clean_throttle(redis: Redis) -> None:
    """Failed-login counters from one test must not lock out the next."""
    async for key in redis.scan_iter(match="throttle:*"):
        await redis.delete(key)


@dataclass
class CountingClassifier:
    """The real classifier, counting its batched calls."""

    inner: Any
    calls: int = 0
    images: int = 0

    @property
    def info(self) -> Any:
        return self.inner.info

    def predict(self, pixels: Any) -> list[list[tuple[int, float]]]:
        self.calls += 1
        self.images += len(pixels)
        result: list[list[tuple[int, float]]] = self.inner.predict(pixels)
        return result


@pytest.fixture(scope="session")
def classifier(settings: Settings) -> Any:
    pytest.importorskip("tensorflow")
    from app.worker.model import load_classifier

    return load_classifier(settings.model_weights, threads=settings.model_threads)


async def reset_queue(redis: Redis) -> None:
    """An empty jobs stream with its consumer group, and no heartbeats."""
    await redis.delete(keys.JOBS, keys.DEAD_JOBS, keys.WORKER_NAMES)
    async for key in redis.scan_iter(match=f"{keys.WORKER_PREFIX}*"):
        await redis.delete(key)
    await queue.ensure_group(redis)


@asynccontextmanager
async def running_worker(redis: Redis, classifier: Any, settings: Settings) -> AsyncIterator[CountingClassifier]:
    counting = CountingClassifier(classifier)
    stop = asyncio.Event()
    worker = Worker(redis, counting, settings, name=f"test-{uuid4().hex[:8]}")
    task = asyncio.create_task(worker.run(stop))
    for _ in range(100):
        if await redis.exists(keys.heartbeat(worker.name)):
            break
        await asyncio.sleep(0.05)
    try:
        yield counting
    finally:
        stop.set()
        await task


@pytest.fixture
async def worker(
    redis: Redis, classifier: Any, settings: Settings, migrated: None
) -> AsyncIterator[CountingClassifier]:
    await reset_queue(redis)
    async with running_worker(redis, classifier, settings) as counting:
        yield counting


@pytest.fixture
async def no_worker(redis: Redis) -> None:
    await reset_queue(redis)


@pytest.fixture(scope="module")
def live_url(tmp_path_factory: pytest.TempPathFactory, migrated: None) -> Iterator[str]:
    """The app over real HTTP, with a worker process (per module: the worker must be gone before
    tests that need no worker)."""
    pytest.importorskip("tensorflow")
    logs = tmp_path_factory.mktemp("live")
    env = os.environ | {"WORKER_NAME": "live-worker", "MODEL_THREADS": "1"}
    with (logs / "worker.log").open("wb") as out:
        worker = subprocess.Popen([sys.executable, "-m", "app.worker"], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        with live_server(logs / "web.log") as url:
            deadline = time.monotonic() + 180
            while httpx.get(f"{url}/health/ready").status_code != 200:
                assert worker.poll() is None, (logs / "worker.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "the worker did not become ready"
                time.sleep(0.5)
            yield url
    finally:
        worker.terminate()
        worker.wait(timeout=60)


# ---- browsers for the page tests: each its own cookie jar ----------------------------------------


@pytest.fixture
async def browser(app: Litestar, client: Client) -> AsyncIterator[Client]:
    """A client with its own cookie jar, like one browser, on the app that `client` keeps running."""
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50001))  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=60) as fresh:
        yield fresh


@pytest.fixture
async def user_browser(browser: Client) -> Client:
    await sign_up_page(browser)
    return browser


@pytest.fixture
async def admin_browser(browser: Client, settings: Settings) -> Client:
    response = await log_in_page(browser, settings.admin_email, settings.admin_password)
    assert response.status_code == 303, response.text
    return browser
