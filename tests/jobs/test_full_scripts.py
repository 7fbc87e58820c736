"""What the web answers when a script of its own meets a full Redis 6.2 (the embedded one): a 503, as for any
command refused for memory. Redis 6.2 reports a script's refused write as a script error (a ResponseError in
redis-py), not as OOM; Redis 7 as OOM."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable
from typing import Any

import httpx
import pytest
from litestar import Litestar
from redis.asyncio import Redis

from app import predictions, usage
from app.jobs import producer
from app.jobs.protocol import Heartbeat, Job
from app.models import Prediction, User
from app.settings import Settings
from app.throttles import Throttle
from app.web.errors import error_body
from tests import samples
from tests.helpers import beat, originals_of, sign_up, unique_email
from tests.jobs.conftest import full


async def refused(attempt: Awaitable[Any]) -> Exception:
    with pytest.raises(Exception) as caught:
        await attempt
    assert isinstance(caught.value, Exception)
    return caught.value


async def test_an_upload_refused_by_a_full_redis_is_a_503(redis62: Redis) -> None:
    """Found auditing: the upload's enqueue script, refused, answered 500 on Redis 6.2 (the embedded default)."""
    job = Job("p-full", "0" * 64, "model", bytes(224 * 224 * 3))
    async with full(redis62):
        exc = await refused(producer.enqueue(redis62, 5, job))
    status, detail, headers, _ = error_body(exc)
    assert (status, headers.get("Retry-After")) == (503, "30"), (status, detail)
    assert "full" in detail


async def test_a_sign_up_refused_by_a_full_redis_is_a_503(redis62: Redis, settings: Settings) -> None:
    """Found auditing: the sign-up throttle's script, refused, answered 500 on Redis 6.2."""
    throttle = Throttle(redis62, settings)
    async with full(redis62):
        exc = await refused(throttle.take([throttle.sign_up_limit("203.0.113.9")]))
    status, detail, _, _ = error_body(exc)
    assert status == 503, (status, detail)
    # Not wedged: with room again the same sign-up is counted.
    assert await throttle.take([throttle.sign_up_limit("203.0.113.9")])


async def test_an_upload_a_full_redis_refuses_leaves_no_row(
    redis62: Redis, app: Litestar, client: httpx.AsyncClient, settings: Settings
) -> None:
    """Found auditing: an upload whose job a full Redis refused (nothing of it went on) was kept as a failed row,
    in its person's history and counted against their quotas, at every retry of the 503; its original stayed."""
    email = unique_email()
    await sign_up(client, email)
    user = await User.get(email=email)
    services = dataclasses.replace(app.state.services, redis=redis62, backlog=producer.BacklogView())
    await beat(redis62, Heartbeat(name="live", model_id=settings.model_id, started_at=0.0), ttl=60)
    data = samples.photo(97_531)
    async with full(redis62, stays=True):
        exc = await refused(predictions.submit(services, user, data))
    assert error_body(exc)[0] == 503
    assert await Prediction.filter(user=user).count() == 0
    assert originals_of(settings, data) == []


async def a_person(client: httpx.AsyncClient) -> User:
    email = unique_email()
    await sign_up(client, email)
    return await User.get(email=email)


@pytest.mark.parametrize("same_person", [True, False], ids=["same person", "two people"])
async def test_an_upload_a_full_redis_refuses_leaves_the_original_another_upload_of_it_names(
    redis62: Redis,
    app: Litestar,
    client: httpx.AsyncClient,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    same_person: bool,
) -> None:
    """A synchronous upload stores a new original and makes its row; an async upload of the same image (it needs
    no room in Redis) is accepted before the first one's job is refused by a full Redis, which removes that row
    and forgets its original: the other's row still names it, and its person is charged it."""
    refused_one = await a_person(client)
    accepted_one = refused_one if same_person else await a_person(client)
    services = dataclasses.replace(app.state.services, redis=redis62, backlog=producer.BacklogView())
    await beat(redis62, Heartbeat(name="live", model_id=settings.model_id, started_at=0.0), ttl=60)
    data = samples.photo(97_533 if same_person else 97_534)
    reached, go = asyncio.Event(), asyncio.Event()
    enqueue = producer.enqueue

    async def enqueue_once_told(*args: Any, **kwargs: Any) -> Any:
        reached.set()
        await go.wait()
        return await enqueue(*args, **kwargs)

    monkeypatch.setattr(producer, "enqueue", enqueue_once_told)
    submitting = asyncio.create_task(predictions.submit(services, refused_one, data))
    await reached.wait()  # its original stored (new) and its row made
    accepted = await predictions.submit(services, accepted_one, data, wait=False)
    async with full(redis62, stays=True):
        go.set()
        exc = await refused(submitting)
    assert error_body(exc)[0] == 503
    assert await Prediction.filter(user=refused_one).exclude(id=accepted.id).count() == 0
    assert originals_of(settings, data) != [] and (settings.upload_dir / accepted.image_path).exists()
    assert await usage.stored_bytes(accepted_one.id) == len(data)
