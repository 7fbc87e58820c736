"""Per-user quotas (waiting uploads, collections in progress, images a day, bytes stored) and the bound on
UPLOAD_DIR: each refusal says the numbers, with Retry-After where waiting helps."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, cast
from uuid import uuid4

import httpx
import pytest
from litestar import Litestar
from litestar.exceptions import ClientException, TooManyRequestsException
from PIL import Image
from redis.asyncio import Redis

from app import keys, quotas, usage
from app.feeder import feed
from app.files import DiskUsage
from app.models import Collection, CollectionStatus, Prediction, Status, User, mark_failed
from app.services import Services
from app.settings import Settings
from tests import samples
from tests.conftest import CountingClassifier
from tests.helpers import eventually, read_elsewhere, sign_up
from tests.page_helpers import upload_page, user_of

Client = httpx.AsyncClient


@contextmanager
def changed(app: Litestar, settings: Settings, **changes: Any) -> Iterator[Services]:
    services: Services = app.state.services
    services.settings = dataclasses.replace(settings, **changes)
    try:
        yield services
    finally:
        services.settings = settings


async def user_of_token(client: Client, auth: dict[str, str]) -> User:
    email = (await client.get("/api/users/me", headers=auth)).json()["email"]
    return await User.get(email=email)


async def add_rows(user: User, n: int, **fields: Any) -> list[Prediction]:
    """Predictions straight in the database. Queued ones are marked as on a stream, so the feeder
    leaves them alone. Each of an image no other test uses: "0" * 64, once, is also one of the images of
    tests/test_admin.py's prune run, which then kept it as still in use."""
    values: dict[str, Any] = {
        "user": user,
        "image_path": "",
        "model_name": "resnet50",
        "model_weights": "random",
        "status": Status.DONE,
    }
    if fields.get("status") == Status.QUEUED:
        values["enqueued_at"] = datetime.now(UTC)
    return [await Prediction.create(**(values | {"image_sha256": uuid4().hex * 2} | fields)) for _ in range(n)]


async def upload(client: Client, auth: dict[str, str], data: bytes, **params: Any) -> httpx.Response:
    return await client.post("/api/predictions", headers=auth, files={"file": ("x.png", data)}, params=params)


async def finish_queued(user: User) -> None:
    """Leave nothing of this test waiting for a later test's worker."""
    ids = await Prediction.filter(user=user, status=Status.QUEUED).values_list("id", flat=True)
    await mark_failed([str(i) for i in ids], "test over")


def assert_refusal(response: httpx.Response, status: int, quota: str, used: int, limit: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["status_code"] == status
    assert body["extra"] == {"quota": quota, "used": used, "limit": limit}
    return body


# ---- waiting uploads ----------------------------------------------------------------------------------


async def test_too_many_waiting_uploads_is_429(
    client: Client, auth: dict[str, str], app: Litestar, settings: Settings, no_worker: None
) -> None:
    user = await user_of_token(client, auth)
    await add_rows(user, 2, status=Status.QUEUED)
    collection = await Collection.create(user=user, total=3)
    await add_rows(user, 3, status=Status.QUEUED, collection=collection)  # collection items: not counted here
    try:
        with changed(app, settings, quota_queued=2):
            refused = await upload(client, auth, samples.photo(13_001, fmt="PNG"), wait="false")
        body = assert_refusal(refused, 429, "queued", 2, 2)
        assert "You have 2 images waiting" in body["detail"] and "(2)" in body["detail"]
        assert int(refused.headers["retry-after"]) > 0
        with changed(app, settings, quota_queued=3):
            allowed = await upload(client, auth, samples.photo(13_001, fmt="PNG"), wait="false")
        assert allowed.status_code != 429, allowed.text
    finally:
        await finish_queued(user)


async def test_uploads_sent_at_once_keep_to_the_waiting_quota(
    client: Client, auth: dict[str, str], app: Litestar, settings: Settings, no_worker: None
) -> None:
    """Found in review: 20 async uploads sent at once against a quota of 3 all read the same figures before any
    row was made, and all got in (20 of 20, PostgreSQL and SQLite)."""
    user = await user_of_token(client, auth)
    photos = [samples.photo(13_100 + i, fmt="PNG") for i in range(20)]
    try:
        with changed(app, settings, quota_queued=3):
            sent = await asyncio.gather(*(upload(client, auth, photo, wait="false") for photo in photos))
        assert sorted(r.status_code for r in sent) == [202] * 3 + [429] * 17
        assert await usage.queued(user.id) == 3
    finally:
        await finish_queued(user)


async def test_uploads_sent_at_once_keep_to_the_days_and_storage_quotas(
    client: Client, auth: dict[str, str], app: Litestar, settings: Settings, worker: CountingClassifier
) -> None:
    """As above, for synchronous uploads: 20 at once against 3 images a day all got in, and against a storage
    quota of 3 images' bytes as well."""
    user = await user_of_token(client, auth)
    with changed(app, settings, quota_images_per_day=3):
        sent = await asyncio.gather(*(upload(client, auth, samples.photo(13_120 + i, fmt="PNG")) for i in range(20)))
    assert sorted(r.status_code for r in sent) == [200] * 3 + [429] * 17
    photos = [samples.photo(13_140 + i, fmt="PNG") for i in range(20)]
    limit = await usage.stored_bytes(user.id) + 3 * max(map(len, photos))
    with changed(app, settings, quota_stored_bytes=limit):
        sent = await asyncio.gather(*(upload(client, auth, photo) for photo in photos))
    assert {r.status_code for r in sent} == {200, 413}
    assert await usage.stored_bytes(user.id) <= limit


async def test_uploads_sent_at_once_with_a_collection_keep_to_the_days_quota(
    client: Client, auth: dict[str, str], app: Litestar, settings: Settings, no_worker: None
) -> None:
    """Found in review: single uploads checked while a collection was started (between its check and its row)
    could not see it, nor it them once checked, nor a count of the day's images one read while the collection
    was read (its read images in neither part): 10 uploads and a collection of 3 at once against 5 a day got
    6 to 8 images in."""
    user = await user_of_token(client, auth)
    first = secrets.randbelow(10**9) + 10**6  # images no other test sent (none of them a cached result)
    archive = samples.zipped({f"{i}.png": samples.photo(first + i, fmt="PNG") for i in range(3)})
    try:
        with changed(app, settings, quota_images_per_day=5):
            collection = client.post("/api/collections", headers=auth, files={"archive": ("x.zip", archive)})
            uploads = (upload(client, auth, samples.photo(first + 10 + i, fmt="PNG"), wait="false") for i in range(10))
            started, *sent = await asyncio.gather(collection, *uploads)
        assert started.status_code in (202, 429) and {r.status_code for r in sent} <= {202, 429}
        assert 3 * (started.status_code == 202) + sum(r.status_code == 202 for r in sent) <= 5
    finally:
        await finish_queued(user)


# ---- images a day -------------------------------------------------------------------------------------


async def test_images_per_day_are_counted_over_24_hours(
    client: Client, auth: dict[str, str], app: Litestar, settings: Settings, no_worker: None
) -> None:
    user = await user_of_token(client, auth)
    now = datetime.now(UTC)
    leaving, outside, _recent = await add_rows(user, 3)
    await Prediction.filter(id=leaving.id).update(created_at=now - timedelta(hours=23))  # leaves in an hour
    await Prediction.filter(id=outside.id).update(created_at=now - timedelta(hours=25))  # not counted
    with changed(app, settings, quota_images_per_day=2) as services:
        refused = await upload(client, auth, samples.photo(13_002, fmt="PNG"))
        body = assert_refusal(refused, 429, "images_per_day", 2, 2)
        assert "You have sent 2 images in the last 24 hours" in body["detail"]
        assert 3500 < int(refused.headers["retry-after"]) <= 3600  # when the 23-hour-old one leaves the window
    with changed(app, settings, quota_images_per_day=3) as services:
        await quotas.check_images(services, user, 1)  # one more fits
        # A collection counts all its images up front: 2 + 2 > 3.
        with pytest.raises(TooManyRequestsException) as caught:
            await quotas.check_collection(services, user, 2, 1000)
        assert caught.value.extra == {"quota": "images_per_day", "used": 2, "limit": 3}
        assert 3500 < int((caught.value.headers or {})["Retry-After"]) <= 3600
        with pytest.raises(ClientException) as too_big:  # could never fit: no point in waiting
            await quotas.check_collection(services, user, 4, 1000)
        assert too_big.value.status_code == 413 and "more than one account may send in a day" in too_big.value.detail


async def test_images_of_a_collection_not_read_yet_count_for_the_day(
    client: Client, auth: dict[str, str], app: Litestar, settings: Settings, redis: Redis, no_worker: None
) -> None:
    # Only the images read so far were counted: a collection of 15,000 being read let another of 15,000
    # through a quota of 20,000 a day.
    user = await user_of_token(client, auth)
    collection = await read_elsewhere(redis, user=user, total=5, archive_path="x.zip")
    lock = keys.reading_lock(str(collection.id))
    await app.state.services.feeder._take_over_reading()  # a feeder round meanwhile: it leaves it alone
    await add_rows(user, 1, collection=collection)  # 1 image of 5 read so far
    try:
        with changed(app, settings, quota_images_per_day=6, quota_collections=10) as services:
            await quotas.check_images(services, user, 1)  # 5 sent + 1 fits
            with pytest.raises(TooManyRequestsException) as caught:
                await quotas.check_collection(services, user, 3, 1000)
            assert caught.value.extra == {"quota": "images_per_day", "used": 5, "limit": 6}
            # Of the 2 too many, the second is one not read yet: it enters the window only as it is read.
            assert int((caught.value.headers or {})["Retry-After"]) > 86_000
        with changed(app, settings, quota_images_per_day=5):
            assert_refusal(await upload(client, auth, samples.photo(13_010, fmt="PNG")), 429, "images_per_day", 5, 5)
    finally:
        await Collection.filter(id=collection.id).update(status=CollectionStatus.DONE)
        await redis.delete(lock)


# ---- collections in progress --------------------------------------------------------------------------


async def test_collections_in_progress_are_limited(
    client: Client, auth: dict[str, str], app: Litestar, settings: Settings
) -> None:
    user = await user_of_token(client, auth)
    for status in (CollectionStatus.CLASSIFYING, CollectionStatus.CLASSIFYING, CollectionStatus.DONE):
        # Classifying only once its image is queued: made classifying and empty, the app's feeder called it
        # done (nothing left queued) if a round came before the image.
        collection = await Collection.create(user=user, total=1, status=CollectionStatus.DONE)
        await feed(app.state.services)  # a feeder round meanwhile: it leaves it alone
        if status != CollectionStatus.DONE:
            await add_rows(user, 1, status=Status.QUEUED, collection=collection)
            await Collection.filter(id=collection.id).update(status=status)
    try:
        with changed(app, settings, quota_collections=2) as services:
            with pytest.raises(TooManyRequestsException) as caught:
                await quotas.check_collection(services, user, 1, 1000)
            assert caught.value.extra == {"quota": "collections", "used": 2, "limit": 2}
            assert "You have 2 collections in progress" in caught.value.detail
            assert int((caught.value.headers or {})["Retry-After"]) > 0
        with changed(app, settings, quota_collections=3) as services:
            await quotas.check_collection(services, user, 1, 1000)  # the finished one does not count
    finally:
        await finish_queued(user)


# ---- bytes stored -------------------------------------------------------------------------------------


async def test_stored_bytes_past_the_quota_is_413(
    client: Client, auth: dict[str, str], app: Litestar, settings: Settings, no_worker: None
) -> None:
    user = await user_of_token(client, auth)
    await add_rows(user, 1, image_path="aa/kept.jpg", image_bytes=900)
    await add_rows(user, 1, image_path="", image_bytes=10**9)  # pruned: keeps nothing
    assert await usage.stored_bytes(user.id) == 900
    photo = samples.photo(13_003, fmt="PNG")
    with changed(app, settings, quota_stored_bytes=900 + len(photo) - 1):
        refused = await upload(client, auth, photo)
    body = assert_refusal(refused, 413, "stored_bytes", 900, 900 + len(photo) - 1)
    assert body["detail"].startswith("You store 900 bytes of originals of the ")
    with changed(app, settings, quota_stored_bytes=900 + len(photo) - 1) as services:
        with pytest.raises(ClientException) as caught:  # and the same for a collection, up front
            await quotas.check_collection(services, user, 1, len(photo))
        assert caught.value.status_code == 413


async def test_archives_waiting_to_be_read_count_as_stored(
    client: Client, auth: dict[str, str], app: Litestar, settings: Settings, redis: Redis, no_worker: None
) -> None:
    # A collection's images are stored as they are read; its archive was not counted meanwhile, so
    # collections started at once each found the whole quota free.
    user = await user_of_token(client, auth)
    waiting = await read_elsewhere(redis, user=user, total=5, archive_path="x.zip", archive_bytes=5000)
    lock = keys.reading_lock(str(waiting.id))
    await Collection.create(user=user, total=5, status=CollectionStatus.CLASSIFYING, archive_bytes=7000)  # read
    await app.state.services.feeder._take_over_reading()  # a feeder round meanwhile: it leaves it alone
    try:
        assert await usage.stored_bytes(user.id) == 5000
        with changed(app, settings, quota_stored_bytes=5999, quota_collections=10) as services:
            with pytest.raises(ClientException) as caught:
                await quotas.check_collection(services, user, 1, 1000)
            assert caught.value.status_code == 413 and caught.value.extra == {
                "quota": "stored_bytes",
                "used": 5000,
                "limit": 5999,
            }
    finally:
        await Collection.filter(id=waiting.id).update(status=CollectionStatus.DONE, archive_path="")
        await redis.delete(lock)


async def test_a_collection_being_read_counts_each_image_once(
    client: Client, auth: dict[str, str], redis: Redis, no_worker: None
) -> None:
    """Found in review: a collection being read held its images' bytes whole until the end, and each image
    read counted again as an original, so other uploads met 413 at half the quota."""
    user = await user_of_token(client, auth)
    reading = await read_elsewhere(redis, user=user, total=3, archive_path="x.zip", archive_bytes=3000)
    lock = keys.reading_lock(str(reading.id))
    try:
        await add_rows(user, 2, collection=reading, image_path="aa/read.png", image_bytes=1000)  # 2 of 3 read
        await add_rows(user, 1, image_path="bb/other.png", image_bytes=500)
        assert await usage.stored_bytes(user.id) == 500 + 2000 + 1000  # the third image's still held
    finally:
        await Collection.filter(id=reading.id).update(status=CollectionStatus.DONE, archive_path="")
        await redis.delete(lock)


async def test_a_started_collection_records_its_archive_size(
    client: Client, auth: dict[str, str], no_worker: None
) -> None:
    files = [("files", (f"{i}.jpg", samples.photo(13_020 + i), "image/jpeg")) for i in range(2)]
    response = await client.post("/api/collections", headers=auth, files=files)
    assert response.status_code == 202, response.text
    collection = await Collection.get(id=response.json()["id"])
    assert collection.archive_bytes >= sum(len(f[1][1]) for f in files)


async def test_a_collection_counts_against_the_storage_quota_as_its_images_expanded(
    client: Client, auth: dict[str, str], app: Litestar, settings: Settings, no_worker: None
) -> None:
    """Found in review: the quota was checked against the archive's bytes, while its images are stored
    expanded as they are read: 279 kB of zipped BMPs stored 24 MB past a quota of 2 MB."""
    pattern = [Image.open(io.BytesIO(samples.photo(13_100 + i, (300, 200), "PNG"))) for i in range(4)]
    images = {f"{i}.bmp": samples.encode(image, "BMP") for i, image in enumerate(pattern)}
    archive = samples.zipped(images)
    expanded = sum(len(data) for data in images.values())
    assert expanded > 50 * len(archive)
    with changed(app, settings, quota_stored_bytes=expanded - 1):
        refused = await client.post("/api/collections", headers=auth, files={"archive": ("a.zip", archive)})
    assert_refusal(refused, 413, "stored_bytes", 0, expanded - 1)
    with changed(app, settings, quota_stored_bytes=expanded):
        accepted = await client.post("/api/collections", headers=auth, files={"archive": ("a.zip", archive)})
    assert accepted.status_code == 202, accepted.text
    assert (await Collection.get(id=accepted.json()["id"])).archive_bytes == expanded  # held while it is read


async def test_an_accepted_upload_records_its_size(
    client: Client, auth: dict[str, str], worker: CountingClassifier
) -> None:
    photo = samples.photo(13_004, fmt="PNG")
    response = await upload(client, auth, photo)
    assert response.status_code == 200, response.text
    assert (await Prediction.get(id=response.json()["id"])).image_bytes == len(photo)
    assert await usage.stored_bytes((await user_of_token(client, auth)).id) == len(photo)


# ---- the disk -----------------------------------------------------------------------------------------


async def test_a_full_disk_refuses_uploads_with_507_and_the_admin_page_warns(
    client: Client,
    auth: dict[str, str],
    admin_auth: dict[str, str],
    user_browser: Client,
    app: Litestar,
    settings: Settings,
    no_worker: None,
) -> None:
    photo = samples.photo(13_005, fmt="PNG")
    with changed(app, settings, max_stored_bytes=1):  # a high-water mark of 0 bytes
        refused = await upload(client, auth, photo)
        page = await upload_page(user_browser, photo, name="full.png")
        admin = await client.get("/admin", headers=admin_auth)
    assert refused.status_code == 507, refused.text
    assert "The image store is full" in refused.json()["detail"] and refused.json()["extra"]["quota"] == "disk"
    assert page.status_code == 507 and "The image store is full" in page.text
    assert admin.status_code == 200 and "The image store is full" in admin.text
    assert "The image store is full" not in (await client.get("/admin", headers=admin_auth)).text


@contextmanager
def disk_holding(services: Services, used: int) -> Iterator[None]:
    """The store as holding `used` bytes, and the count of who stores read afresh."""
    disk, storers = services.disk, services.storers
    services.disk, services.storers = DiskUsage(), usage.Storers()
    services.disk.wrote(used)
    try:
        yield
    finally:
        services.disk, services.storers = disk, storers


async def test_a_crowded_store_is_shared_equally_among_those_who_store(
    client: Client, auth: dict[str, str], app: Litestar, settings: Settings, worker: CountingClassifier
) -> None:
    """Found in review: each account may store QUOTA_STORED_BYTES, and sign-up is open, so a few accounts
    (an hour of sign-ups) filled the store to its high-water mark and everyone else got 507 until an
    administrator freed space. Past CROWDED of the mark, what would take someone past an equal share is refused."""
    quota, heavy_stores = 10**6, 500_000  # each heavy account is within its own quota
    kept_photo = samples.photo(13_030, fmt="PNG")
    heavy_auths = [await sign_up(client) for _ in range(3)]
    heavy = [await user_of_token(client, a) for a in heavy_auths]
    for user in heavy:
        await add_rows(user, 1, image_path="aa/heavy.png", image_bytes=heavy_stores)
    kept_sha = hashlib.sha256(kept_photo).hexdigest()  # kept by the first, charged once (with the rest)
    await add_rows(heavy[0], 1, image_path="bb/kept.png", image_bytes=0, image_sha256=kept_sha)
    little = await user_of_token(client, auth)
    await add_rows(little, 1, image_path="aa/little.png", image_bytes=1000)
    fresh = await sign_up(client)
    storers = await usage.storers()  # these four, and those of earlier tests
    mark = 250_000 * storers  # each one's share: 250,000 bytes
    crowded = dict(max_stored_bytes=mark, stored_high_water=1.0, quota_stored_bytes=quota)
    with changed(app, settings, **crowded) as services, disk_holding(services, int(mark * 0.9)):
        for who in (fresh, auth):  # storing nothing or little: still let in
            accepted = await upload(client, who, samples.photo(13_031, fmt="PNG"))
            assert accepted.status_code == 200, accepted.text
        refused = await upload(client, heavy_auths[1], samples.photo(13_032, fmt="PNG"))
        body = assert_refusal(refused, 507, "disk_share", heavy_stores, mark // storers)
        assert "The image store is nearly full" in body["detail"] and "an equal share of it" in body["detail"]
        with pytest.raises(quotas.StorageFull) as caught:  # and the same for a collection, up front
            await quotas.check_collection(services, heavy[2], 1, 1000)
        assert caught.value.extra == {"quota": "disk_share", "used": heavy_stores, "limit": mark // storers}
        await quotas.check_collection(services, little, 1, 1000)
        await quotas.check_upload(services, heavy[0], kept_photo)  # kept already: it stores nothing new
    with changed(app, settings, **crowded) as services, disk_holding(services, mark):
        full = await upload(client, fresh, samples.photo(13_033, fmt="PNG"))  # past the mark: no one
        assert_refusal(full, 507, "disk", mark, mark)


async def test_a_crowded_store_counts_what_comes_in_against_the_share(
    client: Client, auth: dict[str, str], app: Litestar, settings: Settings, no_worker: None
) -> None:
    """Found in review: only what a person stored already was judged against the share, so someone under it
    by a byte could start a collection of up to MAX_COLLECTION_BYTES, or send an upload, and go past it."""
    share = 100_000
    photos = [samples.photo(13_040 + i, fmt="PNG") for i in range(2)]
    near = await user_of_token(client, auth)
    await add_rows(near, 1, image_path="aa/near.png", image_bytes=share - 1)
    fits_auth = await sign_up(client)
    fits = await user_of_token(client, fits_auth)
    await add_rows(fits, 1, image_path="aa/fits.png", image_bytes=share - len(photos[0]))
    mark = share * await usage.storers()  # these two among them: counted already
    crowded = dict(max_stored_bytes=mark, stored_high_water=1.0, quota_stored_bytes=10**6)
    try:
        with changed(app, settings, **crowded) as services, disk_holding(services, int(mark * 0.9)):
            files = [("files", (f"{i}.png", photo)) for i, photo in enumerate(photos)]
            refused = await client.post("/api/collections", headers=auth, files=files)
            body = assert_refusal(refused, 507, "disk_share", share - 1, share)
            assert "you store 97.7 KiB of originals: " in body["detail"], body["detail"]
            assert "more would take you past an equal share of it (97.7 KiB)" in body["detail"]
            single = await upload(client, auth, photos[0], wait="false")
            assert_refusal(single, 507, "disk_share", share - 1, share)
            exactly = await upload(client, fits_auth, photos[0], wait="false")  # up to the share: let in
            assert exactly.status_code == 202, exactly.text
    finally:
        await finish_queued(fits)


async def test_the_app_measures_the_upload_directory_and_counts_what_it_writes(
    client: Client, auth: dict[str, str], app: Litestar, no_worker: None
) -> None:
    services: Services = app.state.services

    async def measured() -> bool:
        return services.disk.measured

    await eventually(measured, seconds=30, what="the first walk of UPLOAD_DIR")
    before = services.disk.used
    photo = samples.photo(13_006, fmt="PNG")
    # Async: accepted without a worker (a synchronous one is refused, and its original removed).
    assert (await upload(client, auth, photo, wait="false")).status_code == 202
    assert services.disk.used == before + len(photo)
    assert (await upload(client, auth, photo, wait="false")).status_code == 202  # stored once
    assert services.disk.used == before + len(photo)
    await finish_queued(await user_of_token(client, auth))


async def test_the_admin_page_shows_what_each_user_stores(
    client: Client, auth: dict[str, str], admin_auth: dict[str, str], user_browser: Client
) -> None:
    user = await user_of(user_browser)
    await add_rows(user, 2, image_path="aa/a.jpg", image_bytes=1536)
    await add_rows(user, 1, image_path="", image_bytes=10**6)
    page = (await client.get("/admin/users", headers=admin_auth)).text
    row = re.search(rf"<td>{re.escape(user.email)}</td>.*?</tr>", page, re.S)
    assert row, page
    cells = re.findall(r'<td class="num[^"]*">([^<]*)</td>', row.group(0))
    assert cells == ["3", "3.0 KiB", "0"]  # predictions, stored, feedback


async def test_sending_the_same_image_again_is_not_charged_again(
    client: Client, auth: dict[str, str], app: Litestar, settings: Settings, no_worker: None
) -> None:
    """Found in review: the original is stored once, by its hash, but each upload of it was charged its
    bytes, so sending the same photo again was refused with 413 ("N more do not fit") though it stored
    nothing more, and what a person stores (the admin's Users table too) was counted once per upload."""
    user = await user_of_token(client, auth)
    photo = samples.photo(13_011, fmt="PNG")
    try:
        with changed(app, settings, quota_stored_bytes=2 * len(photo) - 1) as services:
            first = await upload(client, auth, photo, wait="false")
            assert first.status_code == 202, first.text
            services.usage.forget(user.id)  # the slow path: the figures read fresh say it does not fit
            again = await upload(client, auth, photo, wait="false")
        assert again.status_code == 202, again.text
        assert await usage.stored_bytes(user.id) == len(photo)
        assert (await Prediction.get(id=again.json()["id"])).image_bytes == 0
    finally:
        await finish_queued(user)


async def test_a_cache_hit_is_not_charged_again(
    client: Client, auth: dict[str, str], worker: CountingClassifier
) -> None:
    """Found in review: a cache hit stores nothing (its original is the one of the first upload), but was
    charged the image's bytes again."""
    photo = samples.photo(13_012, fmt="PNG")
    first, again = [await upload(client, auth, photo) for _ in range(2)]
    assert first.status_code == again.status_code == 200, again.text
    assert (await Prediction.get(id=again.json()["id"])).cached
    assert await usage.stored_bytes((await user_of_token(client, auth)).id) == len(photo)


class CountingLock(asyncio.Lock):
    """A lock that counts who asked for it."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = 0

    async def acquire(self) -> Literal[True]:
        self.asked += 1
        return await super().acquire()


async def test_one_image_sent_at_once_is_charged_once(
    client: Client, auth: dict[str, str], app: Litestar, no_worker: None
) -> None:
    """Found in review: uploads at once of an image the person did not keep all found it new (each stored
    it, or looked for the others' predictions before they were made), and each was charged its bytes. Held
    where async uploads wait to be added, all four are charged before any prediction is made."""
    services: Services = app.state.services
    user = await user_of_token(client, auth)
    photo = samples.photo(13_013, fmt="PNG")
    admitting, services.admitting = services.admitting, CountingLock()
    try:
        async with services.admitting:
            sending = asyncio.gather(*(upload(client, auth, photo, wait="false") for _ in range(4)))

            async def all_charged() -> bool:
                return cast(CountingLock, services.admitting).asked == 5  # with this test's

            await eventually(all_charged, seconds=30, what="the four uploads charged")
        assert {a.status_code for a in await sending} == {202}
        assert await usage.stored_bytes(user.id) == len(photo)
        charged = await Prediction.filter(user=user, image_sha256=hashlib.sha256(photo).hexdigest()).values_list(
            "image_bytes", flat=True
        )
        assert sorted(charged) == [0, 0, 0, len(photo)]
    finally:
        services.admitting = admitting
        await finish_queued(user)


async def test_a_collections_images_kept_already_are_not_charged_again(
    client: Client, auth: dict[str, str], worker: CountingClassifier
) -> None:
    """Found in review: a collection's images were each charged their bytes, also one its person keeps
    already (sent before, or twice in the collection), though each original is stored once."""
    user = await user_of_token(client, auth)
    sent, new = samples.photo(13_015, fmt="PNG"), samples.photo(13_016, fmt="PNG")
    assert (await upload(client, auth, sent)).status_code == 200
    images = [("sent.png", sent), ("new.png", new), ("new-again.png", new)]
    started = await client.post("/api/collections", headers=auth, files=[("files", image) for image in images])
    assert started.status_code == 202, started.text

    async def read() -> bool:
        return (await Collection.get(id=started.json()["id"])).status != CollectionStatus.READING

    await eventually(read, seconds=60, what="the collection read")
    assert await usage.stored_bytes(user.id) == len(sent) + len(new)
