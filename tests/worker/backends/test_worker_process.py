"""`python -m app.worker` as a real process: killed mid-batch it loses nothing; SIGTERM drains it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import pytest
from redis.asyncio import Redis

from app import keys
from app.jobs.producer import live_workers, queue_depth
from app.models import Prediction, Status
from app.settings import Settings
from tests import samples
from tests.conftest import running_worker
from tests.helpers import pending, pending_for

JOBS = 48


@pytest.fixture
def worker_process(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    name = f"proc-{uuid4().hex[:8]}"
    log = tmp_path / "worker.log"
    env = os.environ | {"WORKER_NAME": name, "MODEL_THREADS": "1"}
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "app.worker"], env=env, stdout=out, stderr=subprocess.STDOUT)
    yield name, process, log
    if process.poll() is None:
        process.kill()
        process.wait()


async def wait_for(condition: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


async def submit_many(client: httpx.AsyncClient, headers: dict[str, str], first_seed: int) -> list[str]:
    ids = []
    for i in range(JOBS):
        response = await client.post(
            "/api/predictions",
            headers=headers,
            params={"wait": "false"},
            files={"file": ("p.png", samples.photo(first_seed + i, fmt="PNG"))},
        )
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    return ids


async def all_finished(ids: list[str]) -> bool:
    return await Prediction.filter(id__in=ids, status=Status.QUEUED).count() == 0


async def start(redis: Redis, name: str, process: subprocess.Popen[bytes], log: Path) -> None:
    async def alive() -> bool:
        if process.poll() is not None:
            output = await asyncio.to_thread(log.read_text)
            raise AssertionError(f"worker exited early:\n{output[-3000:]}")
        return bool(await redis.exists(keys.heartbeat(name)))

    await wait_for(alive, 180, "the worker's heartbeat")


async def busy_worker(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    redis: Redis,
    worker_process: tuple[str, subprocess.Popen[bytes], Path],
    first_seed: int,
) -> list[str]:
    """Start the worker, submit JOBS predictions, and return once it holds a batch of them."""
    name, process, log = worker_process
    await start(redis, name, process, log)
    ids = await submit_many(client, auth, first_seed)

    async def holding_jobs() -> bool:
        return await pending_for(redis, name) > 0

    await wait_for(holding_jobs, 60, "the worker to take a batch")
    return ids


async def test_worker_killed_mid_batch_loses_no_job(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    no_worker: None,
    redis: Redis,
    classifier: Any,
    settings: Settings,
    worker_process: tuple[str, subprocess.Popen[bytes], Path],
) -> None:
    name, process, _ = worker_process
    ids = await busy_worker(client, auth, redis, worker_process, first_seed=10_000)
    process.send_signal(signal.SIGKILL)
    process.wait()
    held = await pending_for(redis, name)
    assert held > 0, "the worker was not killed mid-batch"
    async with running_worker(redis, classifier, settings):
        await wait_for(lambda: all_finished(ids), 120, "every job to finish")
    statuses = await Prediction.filter(id__in=ids).values_list("status", flat=True)
    assert sorted(statuses) == [Status.DONE] * JOBS
    assert await queue_depth(redis) == 0
    assert await pending(redis) == 0
    assert await redis.xlen(keys.DEAD_JOBS) == 0


async def test_sigterm_finishes_the_batch_in_hand_and_exits(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    no_worker: None,
    redis: Redis,
    classifier: Any,
    settings: Settings,
    worker_process: tuple[str, subprocess.Popen[bytes], Path],
) -> None:
    name, process, log = worker_process
    ids = await busy_worker(client, auth, redis, worker_process, first_seed=20_000)
    # INFERENCE_BACKEND=auto (the default): the backend chosen, and why, in the heartbeat and the log.
    (heartbeat,) = [w for w in await live_workers(redis) if w.name == name]
    assert heartbeat.backend in {"tensorflow", "openvino"} and heartbeat.engine, heartbeat
    assert (
        heartbeat.backend_choice.startswith(f"{heartbeat.engine}: ")
        and "agrees with TensorFlow" in heartbeat.backend_choice
    )
    process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(process.wait, 60) == 0
    assert await pending_for(redis, name) == 0, "the batch in hand was not finished and acknowledged"
    assert not await redis.exists(keys.heartbeat(name))
    assert name not in [w.name for w in await live_workers(redis)]
    output = await asyncio.to_thread(log.read_text)
    assert "stopped" in output and f"inference backend {heartbeat.backend_choice}" in output
    async with running_worker(redis, classifier, settings):
        await wait_for(lambda: all_finished(ids), 120, "the rest of the jobs")
    statuses = await Prediction.filter(id__in=ids).values_list("status", flat=True)
    assert sorted(statuses) == [Status.DONE] * JOBS
