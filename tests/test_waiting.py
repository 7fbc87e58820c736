"""A request waiting for its result: answered from the worker's message, listening before the job exists."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from litestar import Litestar
from redis.asyncio import Redis

from app import keys, predictions
from app.jobs import producer
from app.jobs.protocol import result_message
from app.models import Prediction, Status, User
from tests import samples
from tests.conftest import CountingClassifier
from tests.helpers import drop_subscriptions, eventually


async def queued_row(client: httpx.AsyncClient, auth: dict[str, str], sha: str) -> Prediction:
    user = await User.get(email=(await client.get("/api/users/me", headers=auth)).json()["email"])
    return await Prediction.create(
        user=user,
        image_sha256=sha,
        image_path="x",
        model_name="resnet50",
        model_weights="random",
        enqueued_at=datetime.now(UTC),
    )


async def test_the_answer_comes_from_the_message_not_the_row(
    client: httpx.AsyncClient, auth: dict[str, str], app: Litestar, no_worker: None, redis: Redis
) -> None:
    services = app.state.services
    prediction = await queued_row(client, auth, "a" * 64)
    services.waiter.expect(str(prediction.id))  # as `submit` does before enqueueing
    fields: dict[str, Any] = {
        "label": "from the message",
        "wnid": "n00000001",
        "score": 0.5,
        "top5": [],
        "model_version": "v",
        "latency_ms": 12.5,
        "finished_at": datetime.now(UTC).isoformat(),
    }
    await redis.publish(keys.RESULTS, result_message(str(prediction.id), Status.DONE, fields))
    answered = await predictions.wait(services, prediction, 5)
    # The row was never finished: the answer can only have come from the message.
    assert (answered.status, answered.label, answered.latency_ms) == (Status.DONE, "from the message", 12.5)
    assert services.waiter.expected(str(prediction.id)) is None  # nothing left behind
    await Prediction.filter(id=prediction.id).update(status=Status.FAILED)


async def test_a_message_that_came_before_the_wait_still_answers_it(
    client: httpx.AsyncClient, auth: dict[str, str], app: Litestar, no_worker: None, redis: Redis
) -> None:
    # A fast worker can answer while `submit` is still enqueueing: the message is dispatched before `wait`
    # starts. The answer must come from that message, not from reading the row back.
    services = app.state.services
    prediction = await queued_row(client, auth, "c" * 64)
    future = services.waiter.expect(str(prediction.id))
    fields = {"label": "early", "wnid": "n00000002", "score": 0.25, "top5": [], "model_version": "v"}
    fields |= {"latency_ms": 3.0, "finished_at": datetime.now(UTC).isoformat()}
    await redis.publish(keys.RESULTS, result_message(str(prediction.id), Status.DONE, fields))
    await asyncio.wait_for(asyncio.shield(future), 30)  # dispatched: the message is in
    answered = await predictions.wait(services, prediction, 1)
    # The row is still queued: only the message can say "early".
    assert (answered.status, answered.label) == (Status.DONE, "early")
    assert services.waiter.expected(str(prediction.id)) is None  # nothing left behind
    await Prediction.filter(id=prediction.id).update(status=Status.FAILED)


async def test_a_message_without_the_result_reads_the_row(
    client: httpx.AsyncClient, auth: dict[str, str], app: Litestar, no_worker: None, redis: Redis
) -> None:
    services = app.state.services
    prediction = await queued_row(client, auth, "b" * 64)
    services.waiter.expect(str(prediction.id))
    await Prediction.filter(id=prediction.id).update(status=Status.FAILED, error="the row says so")
    await redis.publish(keys.RESULTS, result_message(str(prediction.id), Status.FAILED))
    answered = await predictions.wait(services, prediction, 5)
    assert (answered.status, answered.error) == (Status.FAILED, "the row says so")


async def test_an_upload_is_listened_for_before_its_job_is_on_the_stream(
    client: httpx.AsyncClient, auth: dict[str, str], app: Litestar, worker: CountingClassifier
) -> None:
    services = app.state.services
    user = await User.get(email=(await client.get("/api/users/me", headers=auth)).json()["email"])
    prediction = await predictions.submit(services, user, samples.photo(1600), "early.jpg")
    assert services.waiter.expected(str(prediction.id)) is not None
    answered = await predictions.wait(services, prediction, 20)
    stored = await Prediction.get(id=prediction.id)
    assert answered.status == stored.status == Status.DONE
    assert (answered.label, answered.top5, answered.latency_ms) == (stored.label, stored.top5, stored.latency_ms)
    assert answered.finished_at == stored.finished_at


async def test_an_upload_given_up_on_while_enqueueing_leaves_no_waiter_behind(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    app: Litestar,
    worker: CountingClassifier,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A client that goes away cancels its request, here while its job is on its way to Redis. Its waiter
    # must go too: results no longer take the waiters away (a future waits for its `forget`).
    services = app.state.services
    user = await User.get(email=(await client.get("/api/users/me", headers=auth)).json()["email"])
    enqueueing = asyncio.Event()

    async def stuck(*args: object) -> None:
        enqueueing.set()
        await asyncio.Event().wait()

    monkeypatch.setattr(producer, "enqueue", stuck)
    before = set(services.waiter._waiters)
    submitting = asyncio.create_task(predictions.submit(services, user, samples.photo(1601), "gone.jpg"))
    await asyncio.wait_for(enqueueing.wait(), 20)
    assert len(set(services.waiter._waiters) - before) == 1  # listened for, before the job exists
    submitting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await submitting
    assert set(services.waiter._waiters) == before


async def test_a_result_lost_while_the_subscription_is_made_again_still_answers(
    client: httpx.AsyncClient, auth: dict[str, str], app: Litestar, no_worker: None, redis: Redis
) -> None:
    """Found in review: results published while Redis dropped the subscription never came, and their requests
    answered 504 with the row long finished."""
    services = app.state.services
    prediction = await queued_row(client, auth, "d" * 64)
    future = services.waiter.expect(str(prediction.id))
    await drop_subscriptions(redis)  # the web process's subscription, dropped
    await Prediction.filter(id=prediction.id).update(status=Status.DONE, label="stored", finished_at=datetime.now(UTC))
    await redis.publish(keys.RESULTS, result_message(str(prediction.id), Status.DONE))  # nobody listens: lost
    started = time.monotonic()
    answered = await predictions.wait(services, prediction, 60)
    assert (answered.status, answered.label) == (Status.DONE, "stored")
    assert time.monotonic() - started < 30  # once subscribed again, not at the timeout (60 s: a slow machine's margin)
    assert not future.done()  # the message itself never came


async def test_a_result_whose_message_never_came_is_read_from_the_row_at_the_end(
    client: httpx.AsyncClient, auth: dict[str, str], app: Litestar, no_worker: None
) -> None:
    services = app.state.services
    prediction = await queued_row(client, auth, "e" * 64)
    services.waiter.expect(str(prediction.id))
    await Prediction.filter(id=prediction.id).update(status=Status.DONE, label="stored", finished_at=datetime.now(UTC))
    answered = await predictions.wait(services, prediction, 1.5)
    assert (answered.status, answered.label) == (Status.DONE, "stored")


async def test_a_result_lost_between_submit_and_wait_still_answers_at_once(
    client: httpx.AsyncClient, auth: dict[str, str], app: Litestar, no_worker: None, redis: Redis
) -> None:
    """Found in review: the subscription counter was read as the wait began, so a subscription made again
    between `submit`'s `expect` and the wait went unseen, and the request waited its whole timeout."""
    services = app.state.services
    prediction = await queued_row(client, auth, "f" * 64)
    services.waiter.expect(str(prediction.id))  # as `submit` does
    before = services.waiter.subscriptions
    await drop_subscriptions(redis)
    await Prediction.filter(id=prediction.id).update(status=Status.DONE, label="stored", finished_at=datetime.now(UTC))

    async def subscribed_again() -> bool:
        return services.waiter.subscriptions > before

    await eventually(subscribed_again, seconds=30, what="the subscription made again")
    started = time.monotonic()
    answered = await predictions.wait(services, prediction, 60)
    assert (answered.status, answered.label) == (Status.DONE, "stored")
    assert time.monotonic() - started < 30  # not at the timeout
