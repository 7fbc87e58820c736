"""A busy uploader's quotas and sign-in cost no query per image (app/usage.py, app/web/sessions.py), and a
refusal is never made on figures kept in memory."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from litestar import Litestar
from redis.asyncio import Redis

from app import keys, usage
from app.models import Collection, CollectionStatus, Prediction, Status, User
from app.settings import Settings
from tests import samples
from tests.conftest import CountingClassifier
from tests.helpers import read_elsewhere, unique_email
from tests.test_quotas import add_rows, changed, disk_holding, finish_queued, upload, user_of_token


@contextmanager
def queries(caplog: pytest.LogCaptureFixture) -> Iterator[list[str]]:
    """The SQL statements the block itself runs (Tortoise logs each one), not those the app's background
    tasks run meanwhile (the feeder, an archive still being read by an earlier test's collection)."""
    caplog.clear()
    found: list[str] = []
    mine = asyncio.current_task()

    def from_this_task(record: logging.LogRecord) -> bool:
        try:
            return asyncio.current_task() is mine
        except RuntimeError:  # logged from a thread
            return False

    caplog.handler.addFilter(from_this_task)
    try:
        with caplog.at_level(logging.DEBUG, logger="tortoise.db_client"):
            yield found
    finally:
        caplog.handler.removeFilter(from_this_task)
    found.extend(r.getMessage() for r in caplog.records if r.name == "tortoise.db_client")


async def test_uploads_within_the_ttl_read_no_usage_and_no_user_row(
    client: httpx.AsyncClient, auth: dict[str, str], worker: CountingClassifier, caplog: pytest.LogCaptureFixture
) -> None:
    first = await upload(client, auth, samples.photo(1700))
    assert first.status_code == 200, first.text
    with queries(caplog) as statements:
        second = await upload(client, auth, samples.photo(1701))
    assert second.status_code == 200, second.text
    counted = [s for s in statements if "COUNT" in s.upper() or "SUM(" in s.upper()]
    users = [s for s in statements if '"user"' in s and "SELECT" in s.upper()]
    assert not counted and not users, statements
    assert any("INSERT" in s.upper() for s in statements)  # the log does show the queries it runs


async def test_figures_kept_in_memory_never_refuse(
    client: httpx.AsyncClient, auth: dict[str, str], app: Litestar, settings: Settings, no_worker: None
) -> None:
    user = await user_of_token(client, auth)
    services = app.state.services
    rows = await add_rows(user, 2, status=Status.QUEUED)
    try:
        await services.usage.get(user.id)  # kept: 2 waiting
        await Prediction.filter(id__in=[r.id for r in rows]).update(status=Status.FAILED)  # done meanwhile
        with changed(app, settings, quota_queued=2):
            allowed = await upload(client, auth, samples.photo(1702, fmt="PNG"), wait="false")
        assert allowed.status_code == 202, allowed.text  # read fresh before refusing: 0 waiting
        with changed(app, settings, quota_queued=1):
            refused = await upload(client, auth, samples.photo(1703, fmt="PNG"), wait="false")
        assert refused.status_code == 429 and refused.json()["extra"]["used"] == 1
    finally:
        await finish_queued(user)


async def test_the_figures_count_on_and_are_read_again_after_the_ttl(client: httpx.AsyncClient) -> None:
    user = await User.create(email="usage-ttl@example.com", password_hash="x")
    cache = usage.UsageCache(ttl=0.0)
    assert (await cache.get(user.id)).sent == 0
    cache.counted(user.id, usage.Usage(1, 1, 100))
    kept = cache._people[user.id]
    assert (kept.queued, kept.sent, kept.stored) == (1, 1, 100)
    assert (await cache.get(user.id)).stored == 100  # past the TTL: read again, with the upload on its way
    cache.arrived(user.id, usage.Usage(1, 1, 100))  # refused after all (a row made would count in the database)
    assert (await cache.get(user.id)).stored == 0  # the database's figures again


async def test_who_stores_is_counted_only_when_crowded_and_once_a_while(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    app: Litestar,
    settings: Settings,
    worker: CountingClassifier,
    caplog: pytest.LogCaptureFixture,
) -> None:
    services = app.state.services
    mark = 10**9
    with changed(app, settings, max_stored_bytes=mark, stored_high_water=1.0), disk_holding(services, mark // 2):
        with queries(caplog) as calm:
            assert (await upload(client, auth, samples.photo(1704))).status_code == 200
        with disk_holding(services, int(mark * 0.9)), queries(caplog) as crowded:
            for seed in (1705, 1706):
                assert (await upload(client, auth, samples.photo(seed))).status_code == 200
    assert not [s for s in calm if "holding" in s]
    assert len([s for s in crowded if "holding" in s]) == 1, crowded  # kept for the next upload

    storers = usage.Storers()
    before = await storers.count()
    newcomer = await User.create(email=unique_email(), password_hash="x")
    await add_rows(newcomer, 1, image_path="aa/new.png", image_bytes=10)
    assert await storers.count() == before  # kept for STORERS_TTL
    assert await usage.Storers(ttl=0.0).count() == before + 1


async def test_uploads_at_once_past_the_ttl_count_who_stores_once(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Found in review: the count reads every original's row (no index serves it), and each upload that
    found it stale read it again until the first reading came back: 20 uploads at once, 20 such reads."""
    storers = usage.Storers()
    with caplog.at_level(logging.DEBUG, logger="tortoise.db_client"):
        counts = await asyncio.gather(*(storers.count() for _ in range(20)))
    reads = [r.getMessage() for r in caplog.records if "AS holding" in r.getMessage()]
    assert len(set(counts)) == 1
    assert len(reads) == 1, reads


async def test_who_stores_is_each_person_keeping_an_original_or_an_archive_once(
    client: httpx.AsyncClient, redis: Redis
) -> None:
    """Counted: a person keeping originals (once, however many), one whose collection is being read (its archive
    kept), one with both. Not counted: one whose originals were all pruned, one whose collection was read."""
    before = await usage.storers()
    keeping, reading, both, pruned, read = [
        await User.create(email=unique_email(), password_hash="x") for _ in range(5)
    ]
    await add_rows(keeping, 3, image_path="aa/kept.png", image_bytes=10)
    await add_rows(both, 1, image_path="aa/both.png", image_bytes=10)
    await add_rows(pruned, 3, image_bytes=10)  # image_path ""
    # Another process's readings: the app's feeder, taking them, found their archives gone.
    archives = [
        await read_elsewhere(redis, user=person, total=3, archive_path="x.zip", archive_bytes=30)
        for person in (reading, both)
    ]
    locks = [keys.reading_lock(str(c.id)) for c in archives]
    await Collection.create(user=read, total=3, status=CollectionStatus.DONE)
    try:
        assert await usage.storers() == before + 3
    finally:  # read, as far as other tests can tell
        await Collection.filter(id__in=[c.id for c in archives]).update(status=CollectionStatus.DONE, archive_path="")
        await redis.delete(*locks)
