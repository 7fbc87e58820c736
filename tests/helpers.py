"""Helpers shared by the tests."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import pytest
from litestar import Litestar
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from app import db, keys
from app.jobs.consumer import Consumer, Limits
from app.jobs.protocol import Heartbeat, all_streams, as_text
from app.models import Collection, CollectionStatus
from app.settings import Settings

FAKE_LIMITS = Limits(max_batch=1, claim_idle_ms=60_000, max_deliveries=1)


def alive(pid: int) -> bool:
    """The process exists (a zombie not yet reaped counts)."""
    return Path(f"/proc/{pid}").exists()


def unique_email() -> str:
    return f"user-{uuid4().hex[:12]}@example.com"


@contextlib.asynccontextmanager
async def from_address(app: Litestar, address: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client whose requests come from `address`: its throttles, and its share of bodies, are its own."""
    transport = httpx.ASGITransport(app=app, client=(address, 40001))  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=60) as prober:
        yield prober


def share_the_database(monkeypatch: pytest.MonkeyPatch) -> None:
    """A second app (its own settings or Redis) on the tests' database: Tortoise has one set of global
    connections, which the tests' app (`client`) opened and closes; the second app's lifespan leaves them be."""

    async def already_open(*_: object, **__: object) -> None:
        pass

    monkeypatch.setattr(db, "init_db", already_open)
    monkeypatch.setattr(db, "close_db", already_open)


def originals_of(settings: Settings, data: bytes) -> list[str]:
    """The names of the originals of `data` kept under UPLOAD_DIR (one, or none)."""
    sha256 = hashlib.sha256(data).hexdigest()
    return [path.name for path in settings.upload_dir.glob(f"{sha256[:2]}/{sha256}.*")]


async def sign_up(client: httpx.AsyncClient, email: str | None = None) -> dict[str, str]:
    """Register and log in a new user; returns the Authorization header."""
    email = email or unique_email()
    response = await client.post("/api/auth/register", json={"email": email, "password": "correct horse"})
    assert response.status_code == 201, response.text
    response = await client.post("/api/auth/login", json={"email": email, "password": "correct horse"})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


async def hold_feed_lock(redis: Redis, seconds: int = 60) -> None:
    """The app's own feeder held off, its lock taken as another process's once a round of its in progress has
    ended (set over it, that round still fed rows and finished collections). The caller deletes keys.FEED_LOCK."""

    async def taken() -> bool:
        return bool(await redis.set(keys.FEED_LOCK, "this test", ex=seconds, nx=True))

    await eventually(taken, seconds=30, what="the app's feeder to end its round")


async def drop_subscriptions(redis: Redis) -> None:
    """Redis drops the subscriptions on this database's connections (the app's), as when it restarts: one by one,
    by id, as CLIENT KILL TYPE pubsub would drop every subscriber of a server others may share."""
    db = redis.get_connection_kwargs().get("db", 0)
    ours = [found["id"] for found in await redis.client_list(_type="pubsub") if int(found["db"]) == db]
    assert ours, "no subscription on this database to drop"
    for client_id in ours:
        await redis.client_kill_filter(_id=client_id)


async def read_elsewhere(redis: Redis, **fields: Any) -> Collection:
    """A collection being read by another process: its reading lock is held before its row exists, so that
    no round of the app's own feeder takes it over in between (made first, it was taken, its stand-in archive
    read as gone and the collection ended). The caller deletes `keys.reading_lock(id)` when done."""
    collection_id = uuid4()
    await redis.set(keys.reading_lock(str(collection_id)), "another process's", ex=60)
    return await Collection.create(id=collection_id, status=CollectionStatus.READING, **fields)


async def beat(redis: Redis, heartbeat: Heartbeat, ttl: int) -> None:
    """A heartbeat as a worker sends it: a worker the web app sees as live, without running one."""
    await Consumer(redis, heartbeat.name, FAKE_LIMITS).beat(heartbeat, ttl)


async def forget_worker(redis: Redis, name: str) -> None:
    await Consumer(redis, name, FAKE_LIMITS).leave()


def status_of(pid: int) -> dict[str, str]:
    """A process's /proc status, by field (State: "T (stopped)" once a SIGSTOP has taken effect)."""
    return dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 30, what: str = "the condition") -> None:
    """Wait until `check()` is true. The worker answers (publishes) before it acknowledges the job, so
    what follows the answer (the stream emptied, the batch counted) happens a moment after it. `seconds` bounds
    a hang; it is no measure of speed: a stalled machine may take many seconds for what takes milliseconds."""
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, f"timed out after {seconds} s waiting for {what}"
        await asyncio.sleep(0.02)


async def renewed(redis: Redis, lock: str) -> None:
    """Wait until the lock `lock` (held now) is renewed: its time to live up again, as left alone it only goes
    down; it fails as soon as the lock has lapsed. Its holder's renewal observed, not a time waited: a stalled
    machine stretches the time, and a test sure to be past the lock's first time had to wait all of it."""
    lowest = await redis.pttl(lock)

    async def up_again() -> bool:
        nonlocal lowest
        left = await redis.pttl(lock)
        assert left > 0, f"{lock} lapsed"
        lowest, before = min(lowest, left), lowest
        return left > before

    await eventually(up_again, 60, f"{lock} renewed")


async def pending(redis: Redis) -> int:
    """Jobs delivered to a worker and not yet acknowledged, on every stream."""
    total = 0
    for stream in await all_streams(redis):
        if await redis.exists(stream):
            total += (await redis.xpending(stream, keys.WORKERS_GROUP))["pending"]
    return total


async def pending_for(redis: Redis, consumer: str, streams: list[str] | None = None) -> int:
    """Jobs of `streams` (of every stream if None) delivered to `consumer` and not yet acknowledged."""
    held = 0
    for stream in await all_streams(redis) if streams is None else streams:
        with contextlib.suppress(ResponseError):  # no such stream or group (yet)
            consumers = await redis.xinfo_consumers(stream, keys.WORKERS_GROUP)
            held += sum(int(c["pending"]) for c in consumers if as_text(c["name"]) == consumer)
    return held


def sqlite_holds_the_write_lock(path: str, taken: threading.Event, released: threading.Event) -> None:
    """Another program's long write (a migration, a backup tool, someone at the sqlite3 prompt), until `released`
    (a minute at most): a fixed time let a stalled machine's request come after it and find the lock free."""
    db = sqlite3.connect(path, timeout=5, isolation_level=None)
    db.execute("BEGIN IMMEDIATE")
    taken.set()
    released.wait(60)
    db.execute("ROLLBACK")
    db.close()
