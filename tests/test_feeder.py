"""Redis holds a bounded window of work, users take turns, and interactive uploads come first: the feeder
(app/feeder.py), the per-user streams (app/jobs) and the bounds on async jobs."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from litestar import Litestar
from redis.asyncio import Redis
from tortoise.functions import Count

from app import keys, predictions
from app.feeder import WINDOWS_IN_ALL, Source, rooms
from app.jobs.producer import jobs_ahead
from app.models import Prediction, Status
from app.settings import Settings
from tests import samples
from tests.conftest import reset_queue, running_worker
from tests.helpers import eventually, hold_feed_lock, originals_of, sign_up
from tests.web.test_collections_api import as_files, create, described, finished

Client = httpx.AsyncClient


@pytest.fixture
def settings_of(app: Litestar, settings: Settings) -> Iterator[Any]:
    """Change the running app's settings for one test."""
    services = app.state.services

    def change(**changes: Any) -> None:
        services.settings = dataclasses.replace(settings, **changes)

    yield change
    services.settings = settings


async def user_id(client: Client, headers: dict[str, str]) -> int:
    found: int = (await client.get("/api/users/me", headers=headers)).json()["id"]
    return found


def pngs(first_seed: int, count: int) -> list[tuple[str, bytes]]:
    return [(f"{i}.png", samples.photo(first_seed + i, (64, 48), "PNG")) for i in range(count)]


def test_users_take_turns_in_the_wait_estimate() -> None:
    assert jobs_ahead(0, []) == 0
    assert jobs_ahead(0, [500]) == 1  # a newcomer waits for one of the flood, not all of it
    assert jobs_ahead(3, [500, 1]) == 3 + 4 + 1
    assert jobs_ahead(500, [2]) == 502  # the flooder waits for their own


async def test_a_collection_keeps_at_most_a_window_of_jobs_in_redis(
    client: Client,
    auth: dict[str, str],
    redis: Redis,
    no_worker: None,
    classifier: Any,
    settings: Settings,
    settings_of: Any,
) -> None:
    settings_of(feed_window=8)
    body = await create(client, auth, files=as_files(pngs(20_000, 40)))
    stream = keys.bulk_jobs(await user_id(client, auth))

    async def read_and_fed() -> bool:
        return (await described(client, auth, body["id"]))["status"] == "classifying" and (
            await redis.xlen(stream) == 8
        )

    await eventually(read_and_fed, seconds=30, what="the archive read and a window fed")
    await asyncio.sleep(0.6)  # more feeder rounds: still one window
    assert await redis.xlen(stream) == 8
    waiting = await Prediction.filter(collection_id=body["id"], status=Status.QUEUED, enqueued_at__isnull=True)
    assert len(waiting) == 32  # the rest wait in the database
    most = 0
    async with running_worker(redis, classifier, settings) as worker:
        task = asyncio.create_task(finished(client, auth, body["id"]))
        while not task.done():
            most = max(most, await redis.xlen(stream))
            await asyncio.sleep(0.01)
        assert (await task)["done"] == 40
    assert most <= 8 and worker.images == 40


def test_the_streams_hold_a_few_windows_in_all_shared_equally() -> None:
    one, two, three = Source(1, None), Source(2, "c2"), Source(3, "c3")
    assert rooms(8, {one: 100}, {}, 0) == {one: 8}  # alone: a window
    assert rooms(8, {one: 100}, {one: 5}, 5) == {one: 3}
    assert rooms(8, {one: 2, two: 100}, {}, 0) == {one: 2, two: 8}  # never more than it has waiting
    assert rooms(8, {one: 100, two: 100}, {}, WINDOWS_IN_ALL * 8 - 3) in ({one: 3}, {two: 3})  # what is left
    many = {Source(i, None): 5 for i in range(WINDOWS_IN_ALL * 8 + 3)}
    fed = rooms(8, many, {}, 0)
    assert set(fed.values()) == {1} and len(fed) == WINDOWS_IN_ALL * 8  # the rest wait for a turn
    first = {Source(i, None): 1 for i in range(3)}  # those with some in flight go after those with none
    assert rooms(1, {**first, three: 5}, {Source(0, None): 1, Source(1, None): 1}, 2) == {Source(2, None): 1, three: 1}


def test_synchronous_uploads_take_no_share_of_the_bulk_windows() -> None:
    """Found in review: a synchronous upload's row looks fed (it has `enqueued_at`), so 256 people with one
    upload each in flight took the whole budget from a collection. What the streams hold is Redis's count."""
    collection, uploads = Source(999, "c"), {Source(i, None): 1 for i in range(WINDOWS_IN_ALL * 64)}
    assert rooms(64, {collection: 1000}, uploads, 0) == {collection: 64}


def test_past_the_budget_sources_take_turns() -> None:
    """Found in review: sources tied on what they had in flight were taken in the database's order, so
    past the budget the same ones won every round and the others waited until those ran out of work."""
    sources = [Source(i, None) for i in range(WINDOWS_IN_ALL + 2)]
    waiting, fed = dict.fromkeys(sources, 100), dict.fromkeys(sources, 0)
    for _ in range(50):  # each round: every job in flight finished since the last
        for source, n in rooms(1, waiting, {}, 0).items():
            fed[source] += n
            waiting[source] -= n
    assert min(fed.values()) > 0, fed


async def test_a_restarted_redis_does_not_hold_up_everyones_feeding(
    client: Client, redis: Redis, no_worker: None, settings_of: Any
) -> None:
    """Found in review: the rows whose jobs a Redis restarted empty lost stay marked fed until REQUEUE_AFTER
    (300 s) hands them back; counted as what the streams hold, they kept anyone else from being fed."""
    settings_of(feed_window=4)
    owners = [await sign_up(client) for _ in range(4)]
    for n, auth in enumerate(owners):
        await create(client, auth, files=as_files(pngs(24_300 + 10 * n, 6)))
    streams = [keys.bulk_jobs(await user_id(client, auth)) for auth in owners]

    async def full() -> bool:
        return sum([await redis.xlen(stream) for stream in streams]) >= 12

    try:
        await eventually(full, seconds=30, what="the streams filled")
        await redis.delete(*streams)  # as a Redis restarted without persistence: the jobs are gone
        newcomer = await sign_up(client)
        await create(client, newcomer, files=as_files(pngs(24_400, 3)))
        stream = keys.bulk_jobs(await user_id(client, newcomer))
        await eventually(lambda: has_length(redis, stream, 3), seconds=30, what="the newcomer fed")
    finally:
        await reset_queue(redis)


async def test_redis_holds_a_few_windows_whatever_the_number_of_accounts(
    client: Client, redis: Redis, no_worker: None, classifier: Any, settings: Settings, settings_of: Any
) -> None:
    """Found in review: each collection, and each person's async jobs, had a window on the streams, and
    nothing bounded them in all: 4 accounts' collections held 40 MB of Redis with no worker, 100 would hold
    4 GB, until Redis refused everyone's uploads. All sources share WINDOWS_IN_ALL windows."""
    settings_of(feed_window=4)
    owners = [await sign_up(client) for _ in range(6)]
    for n, auth in enumerate(owners):
        await create(client, auth, files=as_files(pngs(24_100 + 10 * n, 6)))
    streams = [keys.bulk_jobs(await user_id(client, auth)) for auth in owners]
    most = WINDOWS_IN_ALL * 4  # 16 jobs, where a window each would be 24

    async def on_streams() -> int:
        return sum([await redis.xlen(stream) for stream in streams])

    async def fed() -> bool:  # each its share of 2 at least, and more for those that came first
        return await on_streams() >= 6 * 2

    await eventually(fed, seconds=30, what="the streams filled")
    await asyncio.sleep(0.6)  # more feeder rounds: no more
    assert await on_streams() <= most
    async with running_worker(redis, classifier, settings) as worker:
        finishing = asyncio.create_task(eventually(no_queued, seconds=60, what="every collection to finish"))
        while not finishing.done():
            assert await on_streams() <= most
            await asyncio.sleep(0.01)
        await finishing
    assert worker.images == 36


async def test_async_jobs_are_accepted_without_a_worker_up_to_the_queue_length(
    client: Client,
    auth: dict[str, str],
    redis: Redis,
    no_worker: None,
    classifier: Any,
    settings: Settings,
    settings_of: Any,
) -> None:
    settings_of(async_queue_limit=12, feed_window=4)
    statuses = []
    for i in range(15):
        response = await client.post(
            "/api/predictions",
            headers=auth,
            params={"wait": "false"},
            files={"file": ("a.png", samples.photo(21_000 + i, (64, 48), "PNG"))},
        )
        statuses.append(response.status_code)
    assert statuses == [202] * 12 + [503] * 3  # no worker: still accepted, until the queue is full
    assert "queue is full" in response.json()["detail"] and int(response.headers["Retry-After"]) > 0
    stream = keys.bulk_jobs(await user_id(client, auth))
    await eventually(lambda: has_length(redis, stream, 4), what="one window of async jobs fed")
    async with running_worker(redis, classifier, settings) as worker:
        await eventually(no_queued, seconds=30, what="every async job to finish")
    assert worker.images == 12


async def test_a_full_queue_still_takes_those_holding_less_than_an_equal_share(
    client: Client, auth: dict[str, str], no_worker: None, settings_of: Any
) -> None:
    """Found in review: once a few accounts filled the async queue, everyone else's async uploads were
    refused until it drained. Past its length, one holding less than an equal share is still let in."""
    waiting = Prediction.filter(status=Status.QUEUED, collection_id=None)
    await waiting.delete()  # earlier tests' (no worker took them)
    settings_of(async_queue_limit=4)
    other = await sign_up(client)

    async def send(headers: dict[str, str], seed: int) -> int:
        image = ("a.png", samples.photo(21_100 + seed, (64, 48), "PNG"))
        response = await client.post(
            "/api/predictions", headers=headers, params={"wait": "false"}, files={"file": image}
        )
        return response.status_code

    assert [await send(auth, i) for i in range(6)] == [202] * 4 + [503] * 2  # the queue full, by one account
    # Someone else still gets in, up to an equal share (among the two of them, half the queue's length).
    assert [await send(other, 10 + i) for i in range(3)] == [202, 202, 503]
    assert await send(auth, 20) == 503
    await waiting.delete()


async def test_an_async_upload_a_full_queue_refuses_leaves_no_original(
    client: Client, auth: dict[str, str], no_worker: None, settings_of: Any, settings: Settings
) -> None:
    """Found in review: an async upload past the queue's bound was refused after its original was stored, which
    stayed for good (no row named it, so no retention run removed it) and counted against no quota."""
    waiting = Prediction.filter(status=Status.QUEUED, collection_id=None)
    await waiting.delete()
    settings_of(async_queue_limit=1)
    sent = [samples.photo(21_200 + i, (64, 48), "PNG") for i in range(3)]
    form = {"wait": "false"}
    statuses = [
        (await client.post("/api/predictions", headers=auth, params=form, files={"file": ("a.png", data)})).status_code
        for data in sent
    ]
    assert statuses == [202, 503, 503]
    assert [len(originals_of(settings, data)) for data in sent] == [1, 0, 0]
    await waiting.delete()


async def test_async_uploads_sent_at_once_stay_within_the_queues_bound(
    client: Client, auth: dict[str, str], no_worker: None, settings_of: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: each upload counted the queue, then added to it, so uploads sent at once all counted
    the same queue and all got in (7 of 24 against a bound of 3). And a queue that drained between the
    counts (no holder left) divided by zero: a 500."""
    waiting = Prediction.filter(status=Status.QUEUED, collection_id=None)
    await waiting.delete()
    settings_of(async_queue_limit=3)

    async def send(seed: int) -> int:
        image = ("a.png", samples.photo(21_200 + seed, (64, 48), "PNG"))
        response = await client.post("/api/predictions", headers=auth, params={"wait": "false"}, files={"file": image})
        return response.status_code

    codes = await asyncio.gather(*(send(i) for i in range(24)))
    assert sorted(codes) == [202] * 3 + [503] * 21 and await waiting.count() == 3
    # As if the queue drained between the counts: no holder left by the time they are counted.
    monkeypatch.setattr(predictions, "Count", lambda field, distinct: Count("collection_id", distinct=distinct))
    assert await send(30) == 503
    await waiting.delete()


async def has_length(redis: Redis, stream: str, length: int) -> bool:
    return await redis.xlen(stream) == length


async def no_queued() -> bool:
    return not await Prediction.filter(status=Status.QUEUED).exists()


async def timed_upload(client: Client, headers: dict[str, str], seed: int) -> httpx.Response:
    return await client.post("/api/predictions", headers=headers, files={"file": ("a.png", samples.photo(seed))})


async def test_a_flood_from_one_user_does_not_hold_up_another(
    app: Any,
    client: Client,
    redis: Redis,
    no_worker: None,
    classifier: Any,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Several batches' worth from one person: more than one sender may have open at once (RequestsOpen).
    monkeypatch.setattr(app.state.requests_open, "each", 4 * settings.max_batch)
    flooder, other = await sign_up(client), await sign_up(client)
    flood_stream = keys.jobs(await user_id(client, flooder))

    async def flood_queued() -> bool:
        return await redis.xlen(flood_stream) >= 2 * settings.max_batch

    async with running_worker(redis, classifier, settings):
        flood = [asyncio.create_task(timed_upload(client, flooder, 22_000 + i)) for i in range(4 * settings.max_batch)]
        await eventually(flood_queued, seconds=30, what="the flood on its stream")
        response = await timed_upload(client, other, 22_999)
        still_waiting = sum(not task.done() for task in flood)
        assert response.status_code == 200, response.text
        # Served in the next batch, taking turns with the flood: not behind all of it.
        assert still_waiting >= settings.max_batch, still_waiting
        assert all(r.status_code == 200 for r in await asyncio.gather(*flood))


async def test_async_jobs_and_collections_wait_behind_an_interactive_upload(
    client: Client, redis: Redis, no_worker: None, classifier: Any, settings: Settings
) -> None:
    bulk, interactive = await sign_up(client), await sign_up(client)
    for i in range(6 * settings.max_batch):
        response = await client.post(
            "/api/predictions",
            headers=bulk,
            params={"wait": "false"},
            files={"file": ("a.png", samples.photo(23_000 + i, (64, 48), "PNG"))},
        )
        assert response.status_code == 202
    async with running_worker(redis, classifier, settings):
        response = await timed_upload(client, interactive, 23_999)
        assert response.status_code == 200
        # Taken in the first batch after it came: most of the async jobs still wait.
        assert await Prediction.filter(status=Status.QUEUED).count() >= 2 * settings.max_batch
        await eventually(no_queued, seconds=60, what="the async jobs to finish")


async def test_a_feed_round_that_fails_leaves_its_images_waiting(
    client: Client, auth: dict[str, str], app: Litestar, redis: Redis, no_worker: None, settings_of: Any
) -> None:
    from app.feeder import feed
    from app.jobs.protocol import connect

    settings_of(async_queue_limit=100)
    services = app.state.services
    working = services.redis
    await hold_feed_lock(redis)  # the app's own feeder stays out: this test feeds
    try:
        response = await client.post(
            "/api/predictions",
            headers=auth,
            params={"wait": "false"},
            files={"file": ("a.png", samples.photo(25_000, (64, 48), "PNG"))},
        )
        assert response.status_code == 202
        services.redis = connect("redis://127.0.0.1:1/0")  # Redis gone mid-round: nothing listens there
        with pytest.raises(Exception):  # noqa: B017 - whichever connection error the client raises
            await feed(services)
    finally:
        if services.redis is not working:
            await services.redis.aclose()
        services.redis = working
        await redis.delete(keys.FEED_LOCK)
    prediction = await Prediction.get(id=response.json()["id"])
    assert prediction.status == Status.QUEUED and prediction.enqueued_at is None  # fed again next round


async def test_one_persons_slow_decodes_do_not_hold_up_the_others_feeding(
    client: Client, app: Litestar, redis: Redis, no_worker: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: a round fed its sources one after another, decoding again each image whose pixels
    were not kept; one person's images slow to decode (a 7000 x 7000 JPEG of 100 scans passes the checks and
    takes seconds) held everyone else's feeding behind all of theirs. Sources are now fed side by side,
    each taking turns at the decode pool, and a source starts no image past SOURCE_ROUND_S."""
    from app import feeder
    from app.jobs import producer
    from app.models import Collection, CollectionStatus

    # Seconds, not fractions of one: the first images of each source must start within SOURCE_ROUND_S of the
    # round's start, which a stall of half a second on a busy machine passed.
    services, slow_s = app.state.services, 1.0
    monkeypatch.setattr(feeder, "SOURCE_ROUND_S", 2.0)
    await hold_feed_lock(redis, 300)  # the app's own feeder stays out: this test feeds
    try:
        users = {}
        for who, count in (("slow", 40), ("other", 3)):
            auth = await sign_up(client)
            users[who] = await user_id(client, auth)
            await create(client, auth, files=as_files(pngs(27_000 + len(users) * 100, count)))

        async def read() -> bool:
            owners = list(users.values())
            return not await Collection.filter(user_id__in=owners, status=CollectionStatus.READING).exists()

        await eventually(read, seconds=60, what="both archives read")
        services.kept._kept.clear()  # as when the kept pixels went to others, or their time passed
        check, decoding = services.decoder.check, asyncio.Semaphore(services.settings.decode_processes)

        async def slow_for_one(data: bytes, owner: Any = None, disk: Any = None) -> Any:
            if owner == users["slow"]:
                async with decoding:  # the decode processes, each busy for slow_s
                    await asyncio.sleep(slow_s)
            return await check(data, owner=owner, disk=disk)

        monkeypatch.setattr(services.decoder, "check", slow_for_one)
        order, enqueue_bulk = [], producer.enqueue_bulk

        async def in_order(redis_: Redis, owner: int, jobs: list[Any], enqueued: Any = None) -> None:
            order.append(owner)
            await enqueue_bulk(redis_, owner, jobs, enqueued)

        monkeypatch.setattr(producer, "enqueue_bulk", in_order)
        first = await feeder.feed(services)
        assert order == [users["other"], users["slow"]]  # not behind the slow one's decodes
        slow = Prediction.filter(user_id=users["slow"], status=Status.QUEUED)
        on_streams = await slow.filter(enqueued_at__isnull=False).count()
        # The slow one's images started within its 2 s: 2 at a time, 1 s each, a turn more at most.
        assert first == 3 + on_streams and 2 <= on_streams <= 8
        assert await slow.filter(enqueued_at__isnull=True).count() == 40 - on_streams  # the next rounds'
        await feeder.feed(services)
        assert await slow.filter(enqueued_at__isnull=False).count() > on_streams
    finally:
        await redis.delete(keys.FEED_LOCK)
        await reset_queue(redis)


async def test_results_wake_the_feeder_to_top_the_window_up(
    client: Client,
    auth: dict[str, str],
    worker: Any,
    settings_of: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from app import feeder

    settings_of(feed_window=8)
    # Rounds on their own only every 30 s: what tops the window up is the results coming in.
    monkeypatch.setattr(feeder, "BUSY_ROUND_S", 30.0)
    monkeypatch.setattr(feeder, "IDLE_ROUND_S", 30.0)
    body = await create(client, auth, files=as_files(pngs(26_000, 40)))
    assert (await finished(client, auth, body["id"], seconds=20))["done"] == 40  # 5 windows in well under 30 s


async def test_only_results_nobody_here_awaits_are_handed_on(redis: Redis) -> None:
    from app.jobs.protocol import result_message
    from app.jobs.results import ResultWaiter

    waiter = ResultWaiter(redis)
    others: list[bool] = []
    waiter.on_other = lambda: others.append(True)
    future = waiter.expect("awaited")
    waiter._dispatch(result_message("awaited", Status.DONE).encode())
    assert future.done() and others == []  # a request here takes it
    waiter._dispatch(result_message("fed", Status.DONE).encode())
    assert others == [True]  # a collection item's, an async job's: the feeder's business
