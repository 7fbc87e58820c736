"""The prediction pipeline end to end: upload -> Redis stream -> batched ResNet50 worker -> result."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from litestar import Litestar
from redis.asyncio import Redis

from app import keys, labels, predictions
from app.feeder import feed
from app.jobs.producer import enqueue, live_workers, queue_depth
from app.jobs.protocol import PIXELS_BYTES, Heartbeat, Job
from app.models import Prediction, Status, User
from app.settings import Settings
from app.worker.classifier import StandInClassifier
from tests import samples
from tests.conftest import CountingClassifier, running_worker
from tests.helpers import beat, eventually, forget_worker, originals_of, pending, sign_up
from tests.page_helpers import prediction_values

Client = httpx.AsyncClient
LABEL_NAMES = {label.name for label in labels.LABELS}


async def upload(
    client: Client, headers: dict[str, str], data: bytes, name: str = "photo.jpg", **params: Any
) -> httpx.Response:
    return await client.post("/api/predictions", headers=headers, files={"file": (name, data)}, params=params)


async def wait_done(client: Client, headers: dict[str, str], prediction_id: str) -> dict[str, Any]:
    timeout = 30
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body: dict[str, Any] = (await client.get(f"/api/predictions/{prediction_id}", headers=headers)).json()
        if body["status"] != "queued":
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"prediction {prediction_id} still queued after {timeout} s")


def assert_result(body: dict[str, Any]) -> None:
    assert body["status"] == "done"
    assert body["label"] in LABEL_NAMES and body["wnid"].startswith("n")
    assert len(body["top5"]) == 5
    scores = [entry["score"] for entry in body["top5"]]
    assert scores == sorted(scores, reverse=True) and 0 <= scores[-1] <= scores[0] <= 1
    assert body["top5"][0]["label"] == body["label"] and body["score"] == scores[0]
    assert body["model"]["name"] == "resnet50" and body["model"]["weights"] == "random"
    assert body["untrained"] is True
    assert len(body["image_sha256"]) == 64 and body["latency_ms"] > 0


async def test_end_to_end(client: Client, auth: dict[str, str], worker: CountingClassifier, settings: Settings) -> None:
    response = await upload(client, auth, samples.photo(100))
    assert response.status_code == 200, response.text
    body = response.json()
    assert_result(body)
    assert "cached" not in body  # admins only
    assert worker.calls == 1
    stored = await client.get(f"/api/predictions/{body['id']}", headers=auth)
    assert stored.json() == body
    listed = (await client.get("/api/predictions", headers=auth)).json()
    assert listed["total"] == 1 and listed["items"][0]["id"] == body["id"]
    original = settings.upload_dir / body["image_sha256"][:2] / f"{body['image_sha256']}.jpg"
    assert original.read_bytes() == samples.photo(100)


async def test_finished_jobs_leave_the_stream(
    client: Client, auth: dict[str, str], worker: CountingClassifier, redis: Redis
) -> None:
    assert (await upload(client, auth, samples.photo(101))).status_code == 200

    async def acknowledged() -> bool:  # the worker answers first, then acknowledges (design, step e)
        return await queue_depth(redis) == 0

    await eventually(acknowledged, what="the finished job to leave the stream")
    assert await pending(redis) == 0


async def test_same_image_is_answered_from_the_cache(
    client: Client, auth: dict[str, str], admin_auth: dict[str, str], worker: CountingClassifier
) -> None:
    first = (await upload(client, auth, samples.photo(102))).json()
    calls = worker.calls
    second = await upload(client, auth, samples.photo(102), name="renamed.png")
    assert second.status_code == 200
    body = second.json()
    assert worker.calls == calls
    assert (body["label"], body["top5"]) == (first["label"], first["top5"])
    assert body["id"] != first["id"]
    assert "cached" not in body and body.keys() == first.keys()  # admins only
    seen_by_admin = (await client.get(f"/api/predictions/{body['id']}", headers=admin_auth)).json()
    assert seen_by_admin["cached"] is True
    first_by_admin = (await client.get(f"/api/predictions/{first['id']}", headers=admin_auth)).json()
    assert first_by_admin["cached"] is False


async def test_another_persons_result_does_not_answer_an_upload(
    client: Client, auth: dict[str, str], admin_auth: dict[str, str], worker: CountingClassifier
) -> None:
    """Found in review: the cache answered anyone's upload of an image someone else had sent, at once, so
    an upload with wait=false answered 200 (done) for such an image and 202 (queued) for an unseen one:
    anyone could tell whether others had sent a given image."""
    image = samples.photo(105)
    assert (await upload(client, auth, image)).json()["status"] == "done"
    calls, other = worker.calls, await sign_up(client)
    probe = await upload(client, other, image, wait="false")
    assert probe.status_code == 202 and probe.json()["status"] == "queued", probe.text
    done = await wait_done(client, other, probe.json()["id"])
    assert worker.calls > calls  # classified again, for them
    seen_by_admin = (await client.get(f"/api/predictions/{done['id']}", headers=admin_auth)).json()
    assert seen_by_admin["cached"] is False


async def test_a_new_image_is_not_looked_up_in_the_cache(
    client: Client, auth: dict[str, str], worker: CountingClassifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    lookups: list[str] = []
    looked_up = predictions.earlier_result

    async def counted(services: Any, sha256: str, user_id: int) -> dict[str, Any] | None:
        lookups.append(sha256)
        return await looked_up(services, sha256, user_id)

    monkeypatch.setattr(predictions, "earlier_result", counted)
    first = (await upload(client, auth, samples.photo(103))).json()
    assert first["status"] == "done" and lookups == []  # its original was not there: nothing to look up
    second = await upload(client, auth, samples.photo(103))
    assert second.json()["label"] == first["label"] and lookups == [first["image_sha256"]]


async def test_an_image_whose_original_was_removed_is_classified_again(
    client: Client, auth: dict[str, str], worker: CountingClassifier, settings: Settings
) -> None:
    first = (await upload(client, auth, samples.photo(104))).json()
    calls = worker.calls
    sha256 = first["image_sha256"]
    (settings.upload_dir / sha256[:2] / f"{sha256}.jpg").unlink()  # as a retention run shorter than RESULT_TTL
    again = (await upload(client, auth, samples.photo(104))).json()
    assert again["status"] == "done" and worker.calls == calls + 1
    assert (again["label"], again["top5"]) == (first["label"], first["top5"])


async def test_concurrent_uploads_share_batches(
    client: Client, auth: dict[str, str], worker: CountingClassifier
) -> None:
    count = 12
    responses = await asyncio.gather(*(upload(client, auth, samples.photo(200 + i)) for i in range(count)))
    assert [r.status_code for r in responses] == [200] * count
    for response in responses:
        assert_result(response.json())
    assert worker.images == count
    assert worker.calls < count, f"{count} uploads took {worker.calls} model calls"


@pytest.mark.parametrize("how", [{"params": {"wait": "false"}}, {"headers": {"Prefer": "respond-async"}}])
async def test_asked_not_to_wait_answers_202(
    client: Client, auth: dict[str, str], worker: CountingClassifier, how: dict[str, Any]
) -> None:
    data = samples.photo(300 + len(str(how)))
    headers = auth | how.get("headers", {})
    response = await upload(client, headers, data, **how.get("params", {}))
    assert response.status_code == 202, response.text
    prediction_id = response.json()["id"]
    assert response.headers["Location"] == f"/api/predictions/{prediction_id}"
    assert_result(await wait_done(client, auth, prediction_id))


async def test_nobody_reads_another_users_prediction(
    client: Client, auth: dict[str, str], admin_auth: dict[str, str], worker: CountingClassifier
) -> None:
    prediction_id = (await upload(client, auth, samples.photo(400))).json()["id"]
    stranger = await sign_up(client)
    response = await client.get(f"/api/predictions/{prediction_id}", headers=stranger)
    assert response.status_code == 404 and response.json()["detail"] == "No such prediction"
    assert (await client.get("/api/predictions", headers=stranger)).json()["total"] == 0
    assert (await client.get(f"/api/predictions/{prediction_id}", headers=admin_auth)).status_code == 200
    assert (await client.get("/api/predictions/not-a-uuid", headers=auth)).status_code in (400, 404)


async def test_listing_is_paginated_newest_first(
    client: Client, auth: dict[str, str], worker: CountingClassifier
) -> None:
    ids = [(await upload(client, auth, samples.photo(500 + i))).json()["id"] for i in range(3)]
    page1 = (await client.get("/api/predictions", headers=auth, params={"per_page": 2})).json()
    page2 = (await client.get("/api/predictions", headers=auth, params={"per_page": 2, "page": 2})).json()
    assert page1["total"] == 3
    assert [p["id"] for p in page1["items"] + page2["items"]] == ids[::-1]
    assert (await client.get("/api/predictions", headers=auth, params={"per_page": 0})).status_code == 400


BAD_UPLOADS = [
    (b"", "empty.jpg", 400, "empty"),
    (b"hello, I am text", "cat.jpg", 415, "JPEG, PNG, WebP, GIF, BMP, HEIC or AVIF"),
    (samples.encode(samples.half_red_half_blue(), "TIFF"), "photo.jpg", 415, "JPEG, PNG, WebP, GIF, BMP, HEIC or AVIF"),
    (samples.png_bomb(), "bomb.png", 400, "too large"),
    (samples.truncated_jpeg(), "half.jpg", 400, "truncated or corrupt"),
    (samples.corrupt_png(), "bad.png", 400, "truncated or corrupt"),
]


@pytest.mark.parametrize(("data", "name", "status", "message"), BAD_UPLOADS)
async def test_bad_uploads_get_a_clear_4xx_and_never_reach_the_worker(
    client: Client,
    auth: dict[str, str],
    redis: Redis,
    no_worker: None,
    data: bytes,
    name: str,
    status: int,
    message: str,
) -> None:
    response = await upload(client, auth, data, name=name)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]
    assert await queue_depth(redis) == 0
    assert (
        await Prediction.filter(user__email=(await client.get("/api/users/me", headers=auth)).json()["email"]).count()
        == 0
    )


async def test_upload_over_the_limit_is_413(
    client: Client, auth: dict[str, str], settings: Settings, no_worker: None
) -> None:
    response = await upload(client, auth, b"\xff\xd8" + b"0" * settings.max_upload_bytes)
    assert response.status_code == 413, response.text
    assert response.json()["status_code"] == 413


@pytest.mark.parametrize(
    "request_kwargs",
    [
        {"files": {"other": ("x.jpg", b"abc")}},
        {"json": {"file": "abc"}},
        {"content": b"--x\r\nbroken", "headers": {"Content-Type": "multipart/form-data; boundary=x"}},
    ],
)
async def test_missing_or_malformed_upload_is_4xx(
    client: Client, auth: dict[str, str], request_kwargs: dict[str, Any], no_worker: None
) -> None:
    headers = auth | request_kwargs.pop("headers", {})
    response = await client.post("/api/predictions", headers=headers, **request_kwargs)
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["detail"]


async def test_uploads_need_a_signed_in_user(client: Client) -> None:
    response = await client.post("/api/predictions", files={"file": ("a.jpg", samples.photo(1))})
    assert response.status_code == 401


async def test_no_live_worker_is_503_at_once(
    client: Client, auth: dict[str, str], no_worker: None, redis: Redis
) -> None:
    started = time.monotonic()
    response = await upload(client, auth, samples.photo(600))
    assert response.status_code == 503
    # Words for the people (and programs) that upload; how to start a worker is for admins' pages.
    assert "warming up" in response.json()["detail"] and "app.worker" not in response.json()["detail"]
    assert int(response.headers["Retry-After"]) > 0
    assert time.monotonic() - started < 5
    assert await queue_depth(redis) == 0


async def test_an_upload_refused_after_storing_its_original_leaves_none_behind(
    client: Client, auth: dict[str, str], no_worker: None, settings: Settings
) -> None:
    """Found in review: with no worker alive (as with the service busy, or the async queue full) an upload was
    refused after its original was stored. No row named that original, so no retention run removed it, and
    no quota counted it: one account could store without end, past QUOTA_STORED_BYTES and the day's images."""
    sent = [samples.photo(610 + i) for i in range(3)]
    for data in sent:
        assert (await upload(client, auth, data)).status_code == 503
    assert [originals_of(settings, data) for data in sent] == [[], [], []]
    # An original another upload stored stays: its row names it.
    other, kept = await sign_up(client), samples.photo(613)
    assert (await upload(client, other, kept, wait="false")).status_code == 202
    assert (await upload(client, auth, kept)).status_code == 503
    assert originals_of(settings, kept) == [f"{hashlib.sha256(kept).hexdigest()}.jpg"]


async def test_a_worker_of_another_model_is_no_worker_for_this_app(
    client: Client, auth: dict[str, str], no_worker: None, redis: Redis, settings: Settings
) -> None:
    """Found in review: the capacity check and /health/ready counted any worker, whatever its model, so with only
    a worker of other weights an upload was queued for a worker that never takes it, and the app said ready."""
    other = StandInClassifier("imagenet")
    assert other.info.id != settings.model_id
    async with running_worker(redis, other, settings) as counting:
        response = await upload(client, auth, samples.photo(610))
        ready = await client.get("/health/ready")
    assert response.status_code == 503 and "warming up" in response.json()["detail"]
    assert await queue_depth(redis) == 0 and counting.calls == 0
    assert ready.status_code == 503
    body = ready.json()
    assert (body["status"], body["workers"], body["backends"]) == ("not ready", 0, [])
    # Why: the worker alive runs another model than this app's.
    assert body["model"] == settings.model_id
    assert list(body["other_workers"].values()) == [other.info.id]


async def test_live_workers_are_those_whose_heartbeat_has_not_expired(no_worker: None, redis: Redis) -> None:
    short = Heartbeat(name="short", model_id="m", started_at=time.time())
    for name in ("short", "long", "leaving"):
        await beat(redis, Heartbeat(name=name, model_id="m", started_at=time.time()), ttl=30)
    await redis.set("result:m:" + "0" * 64, "{}")  # other keys are never looked at
    assert sorted(w.name for w in await live_workers(redis)) == ["leaving", "long", "short"]
    # Its last heartbeat lasts 1 s, from here: made 1 s long at first, a stall of the machine before the
    # first look had it expired there.
    await beat(redis, short, ttl=1)
    await forget_worker(redis, "leaving")
    await asyncio.sleep(1.1)
    assert [w.name for w in await live_workers(redis)] == ["long"]
    assert await redis.zrange(keys.WORKER_NAMES, 0, -1) == [b"long"]  # the expired one is pruned


async def fake_worker(redis: Redis, rate: float) -> Heartbeat:
    """A heartbeat of a worker that takes no jobs: work queues up behind it."""
    heartbeat = Heartbeat(name="fake", model_id="resnet50-random", started_at=time.time(), images_per_second=rate)
    await beat(redis, heartbeat, ttl=30)
    return heartbeat


async def test_full_backlog_is_503_with_retry_after(
    client: Client, auth: dict[str, str], no_worker: None, redis: Redis, settings: Settings
) -> None:
    await fake_worker(redis, rate=1.0)
    user_id = (await client.get("/api/users/me", headers=auth)).json()["id"]
    for _ in range(int(settings.wait_timeout) + 5):
        await redis.xadd(keys.jobs(user_id), {"filler": "1"})
    await redis.zadd(keys.JOB_USERS, {str(user_id): time.time()})
    await redis.sadd(keys.JOBS_WAITING, str(user_id))
    response = await upload(client, auth, samples.photo(700))
    assert response.status_code == 503, response.text
    assert "busy" in response.json()["detail"]
    assert int(response.headers["Retry-After"]) >= 1
    await reset_and_forget(redis)


async def reset_and_forget(redis: Redis) -> None:
    from tests.conftest import reset_queue

    await reset_queue(redis)


async def test_wait_timeout_is_504_with_the_id(
    auth: dict[str, str], client: Client, app: Litestar, no_worker: None, redis: Redis, settings: Settings
) -> None:
    await fake_worker(redis, rate=50.0)
    services = app.state.services
    services.settings = dataclasses.replace(settings, wait_timeout=0.5)
    try:
        response = await upload(client, auth, samples.photo(800))
    finally:
        services.settings = settings
    assert response.status_code == 504, response.text
    body = response.json()
    prediction_id = body["extra"]["id"]
    assert response.headers["Location"] == f"/api/predictions/{prediction_id}"
    later = await client.get(f"/api/predictions/{prediction_id}", headers=auth)
    assert later.status_code == 200 and later.json()["status"] == "queued"
    await reset_and_forget(redis)


async def test_poison_job_is_dead_lettered_and_the_rest_of_its_batch_finishes(
    client: Client, auth: dict[str, str], no_worker: None, redis: Redis, classifier: Any, settings: Settings
) -> None:
    from tests.conftest import running_worker

    user = await User.get(email=(await client.get("/api/users/me", headers=auth)).json()["email"])
    common: dict[str, Any] = {
        "user": user,
        "image_path": "x",
        "model_name": "resnet50",
        "model_weights": "random",
        "enqueued_at": datetime.now(UTC),  # on a stream already (below): not the feeder's
    }
    poisoned = await Prediction.create(image_sha256="0" * 64, **common)
    healthy = await Prediction.create(image_sha256="1" * 64, **common)
    await enqueue(redis, user.id, Job(str(poisoned.id), "0" * 64, "resnet50-random", b"short"))
    pixels = bytes(range(256)) * (PIXELS_BYTES // 256)
    await enqueue(redis, user.id, Job(str(healthy.id), "1" * 64, "resnet50-random", pixels))
    async with running_worker(redis, classifier, settings):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            await poisoned.refresh_from_db()
            if poisoned.status != Status.QUEUED:
                break
            await asyncio.sleep(0.2)
    await healthy.refresh_from_db()
    assert healthy.status == Status.DONE
    assert poisoned.status == Status.FAILED
    assert f"after {settings.max_deliveries} attempts" in (poisoned.error or "")
    dead = cast("list[tuple[bytes, dict[bytes, bytes]]]", await redis.xrange(keys.DEAD_JOBS))
    assert len(dead) == 1 and dead[0][1][b"id"] == str(poisoned.id).encode()
    assert await queue_depth(redis) == 0
    body = (await client.get(f"/api/predictions/{poisoned.id}", headers=auth)).json()
    assert body["status"] == "failed" and body["error"]


async def test_health(client: Client, no_worker: None, redis: Redis, classifier: Any, settings: Settings) -> None:
    from tests.conftest import running_worker

    assert (await client.get("/health/live")).json() == {"status": "ok"}
    not_ready = await client.get("/health/ready")
    assert not_ready.status_code == 503
    assert not_ready.json() == {
        "database": True,
        "redis": True,
        "workers": 0,
        "queue_depth": 0,
        "status": "not ready",
        "backends": [],
        "model": settings.model_id,
        "other_workers": {},
    }
    async with running_worker(redis, classifier, settings):
        ready = await client.get("/health/ready")
    assert ready.status_code == 200
    body = ready.json()
    (backend,) = body.pop("backends")  # the worker's backend: tests/web/test_worker_backends.py
    assert body == {  # the queue was emptied (no_worker) and nothing was sent since
        "database": True,
        "redis": True,
        "workers": 1,
        "queue_depth": 0,
        "status": "ready",
        "model": settings.model_id,
        "other_workers": {},
    }
    assert backend["worker"].startswith("test-") and backend["engine"] == "stand-in"


async def test_several_workers_share_the_stream(
    client: Client, auth: dict[str, str], no_worker: None, redis: Redis, classifier: Any, settings: Settings
) -> None:
    from tests.conftest import running_worker

    count = 24
    async with (
        running_worker(redis, classifier, settings) as first,
        running_worker(redis, classifier, settings) as second,
    ):
        responses = await asyncio.gather(*(upload(client, auth, samples.photo(1100 + i)) for i in range(count)))
    assert [r.status_code for r in responses] == [200] * count
    assert first.images + second.images == count
    assert first.images > 0 and second.images > 0


async def test_a_lookup_reads_one_row_per_image_however_often_it_was_sent(
    client: Client, auth: dict[str, str], app: Litestar, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: a lookup read every prediction of each image asked for, and kept the newest: an
    image sent 20,000 times (each a cheap cache hit) made each lookup of it take 0.7 to 1 s of the process.
    Only the rows of the images asked for are counted: the app's feeder, reading rows of work waiting
    meanwhile (another image here), made more."""
    user = await User.get(id=(await client.get("/api/users/me", headers=auth)).json()["id"])
    often, once = prediction_values(user), prediction_values(user)
    start = datetime.now(UTC) - timedelta(hours=1)
    sent = [Prediction(**(often | {"created_at": start + timedelta(seconds=n)})) for n in range(300)]
    waiting = prediction_values(user) | {"status": Status.QUEUED, "label": None, "score": None, "top5": None}
    await Prediction.bulk_create([*sent, Prediction(**once), Prediction(**waiting)])
    hashes = [often["image_sha256"], once["image_sha256"], "f" * 64]  # the last was never sent
    made = 0
    init_from_db = Prediction._init_from_db

    def counted(cls: type[Prediction], **row: Any) -> Prediction:
        nonlocal made
        made += row["image_sha256"] in hashes
        return init_from_db(**row)

    monkeypatch.setattr(Prediction, "_init_from_db", classmethod(counted))
    await feed(app.state.services)  # a feeder round meanwhile, of the image waiting
    response = await client.post("/api/predictions/lookup", json={"sha256": hashes}, headers=auth)
    assert response.status_code == 200, response.text
    found = response.json()["found"]
    assert found.keys() == set(hashes[:2]) and made == 2
    assert found[often["image_sha256"]]["id"] == str(sent[-1].id)  # the newest


async def test_an_upload_refused_at_once_with_an_accepted_one_leaves_its_original(
    app: Litestar, client: Client, auth: dict[str, str], no_worker: None, settings: Settings
) -> None:
    """Found in review: two uploads of one image at once both found the original missing and both wrote it,
    the later one over the earlier (156 pairs of 200 in two processes). When the later writer was refused
    (no worker alive) and the other accepted, the refused one removed the original as its own
    (files.forget_original), and the accepted upload's row named a file that was gone. Each pair is let into
    the decode processes together here, and on once both are back; the accepted one is sent async, the
    refused one by another person (one person's uploads are decoded in turn)."""
    decoder, other = app.state.services.decoder, await sign_up(client)
    check, arrived, decoded, written = decoder.check, asyncio.Barrier(2), asyncio.Barrier(2), []

    async def together(*args: Any, **kwargs: Any) -> Any:
        await arrived.wait()
        image = await check(*args, **kwargs)
        written.append(image.written_ns)
        await decoded.wait()  # neither is refused (and removes it) before both stored it
        return image

    decoder.check = together
    try:
        for i in range(16):
            data = samples.noise(i)
            accepted, refused = await asyncio.gather(
                upload(client, auth, data, "a.png", wait="false"), upload(client, other, data, "a.png")
            )
            assert (accepted.status_code, refused.status_code) == (202, 503)
            assert sum(when is not None for when in written[-2:]) == 1, f"pair {i}: both wrote it"
            prediction = await Prediction.get(id=accepted.json()["id"])
            assert (settings.upload_dir / prediction.image_path).read_bytes() == data, f"pair {i}"
            await prediction.delete()
    finally:
        decoder.check = check


async def test_an_upload_of_an_original_a_refused_one_removes_keeps_it(
    client: Client, auth: dict[str, str], no_worker: None, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: a refused upload looked at the original it wrote (its time still its own), then deleted
    it; another upload of the image that stored it again just between (touched it, being there) made its row,
    which named a file then gone. A retention run deleted the same way. That upload is sent here as the refused
    one deletes."""
    loop, other, data = asyncio.get_running_loop(), await sign_up(client), samples.photo(20_750)
    unlink, sent = Path.unlink, list[httpx.Response]()

    def unlink_after_another_upload(path: Path, missing_ok: bool = False) -> None:
        if not sent:
            sent.append(asyncio.run_coroutine_threadsafe(upload(client, other, data, wait="false"), loop).result(30))
        unlink(path, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink_after_another_upload)
    assert (await upload(client, auth, data)).status_code == 503
    monkeypatch.undo()
    [accepted] = sent
    assert accepted.status_code == 202
    prediction = await Prediction.get(id=accepted.json()["id"])
    assert (settings.upload_dir / prediction.image_path).read_bytes() == data
    await prediction.delete()
