"""An earlier result of the same image answers a new upload: the database is the result cache."""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import pytest
from litestar import Litestar
from redis.asyncio import ConnectionPool, Redis

from app import db, keys
from app.jobs.results import RESULT_FIELDS, cache_hits, result_fields
from app.models import Prediction, Status, User
from app.predictions import earlier_result, earlier_result_sql, newest_sql
from app.services import Services
from app.settings import Settings

RESULT = result_fields([(3, 0.7), (4, 0.1), (5, 0.1), (6, 0.05), (7, 0.05)], "keras-3")


async def a_prediction(settings: Settings, sha256: str, **changes: Any) -> Prediction:
    user = await User.create(email=f"earlier-{uuid4().hex[:10]}@example.com", password_hash="not a hash")
    fields = {
        "user": user,
        "image_sha256": sha256,
        "image_path": f"{sha256[:2]}/{sha256}.jpg",
        "model_name": settings.model_name,
        "model_weights": settings.model_weights,
        "status": Status.DONE,
        "finished_at": datetime.now(UTC),
        **RESULT,
    }
    return await Prediction.create(**(fields | changes))


@pytest.fixture
async def counted_apart(
    app: Litestar, client: httpx.AsyncClient, redis: Redis
) -> AsyncIterator[tuple[Services, Redis]]:
    """The app's services with a Redis database of their own, where only the test counts cache hits: the
    feeder's rounds, looking up earlier results for work earlier tests left waiting, count theirs in the
    app's meanwhile."""
    pool = redis.connection_pool
    database = (int(pool.connection_kwargs.get("db", 0)) + 1) % 16
    own = Redis(
        connection_pool=ConnectionPool(
            connection_class=pool.connection_class, **pool.connection_kwargs | {"db": database}
        )
    )
    await own.delete(keys.CACHE_HITS)
    try:
        yield dataclasses.replace(app.state.services, redis=own), own
    finally:
        await own.delete(keys.CACHE_HITS)
        await own.aclose()


async def test_the_same_image_by_the_same_model_is_answered_and_counted(
    counted_apart: tuple[Services, Redis], settings: Settings
) -> None:
    services, own = counted_apart
    sha256 = uuid4().hex * 2
    earlier = await a_prediction(settings, sha256)
    found = await earlier_result(services, sha256, earlier.user_id)  # type: ignore[attr-defined]
    assert found == {name: RESULT[name] for name in RESULT_FIELDS}
    assert await cache_hits(own) == 1
    # Never another person's: answered at once, it would tell them this image was sent.
    someone_else = await User.create(email=f"earlier-{uuid4().hex[:10]}@example.com", password_hash="not a hash")
    assert await earlier_result(services, sha256, someone_else.id) is None
    assert await cache_hits(own) == 1


async def test_no_answer_from_another_model_an_old_result_or_an_unfinished_one(
    counted_apart: tuple[Services, Redis], settings: Settings
) -> None:
    services, own = counted_apart
    too_old = datetime.now(UTC) - timedelta(seconds=settings.result_ttl + 60)
    unusable: list[dict[str, Any]] = [
        {"model_weights": "another.h5"},
        {"model_name": "resnet101"},
        {"finished_at": too_old},
        {"status": Status.QUEUED, "finished_at": None, "label": None},
        {"status": Status.FAILED, "error": "unreadable"},
    ]
    for changes in unusable:
        sha256 = uuid4().hex * 2
        unusable_one = await a_prediction(settings, sha256, **changes)
        assert await earlier_result(services, sha256, unusable_one.user_id) is None, changes  # type: ignore[attr-defined]
    assert await cache_hits(own) == 0
    # A shorter RESULT_TTL makes a result too old sooner.
    sha256 = uuid4().hex * 2
    minutes_old = await a_prediction(settings, sha256, finished_at=datetime.now(UTC) - timedelta(seconds=120))
    user_id = minutes_old.user_id  # type: ignore[attr-defined]
    services.settings = dataclasses.replace(settings, result_ttl=60)
    try:
        assert await earlier_result(services, sha256, user_id) is None
    finally:
        services.settings = settings
    assert await earlier_result(services, sha256, user_id) is not None


async def test_the_lookup_reads_only_the_images_own_rows(tmp_path: Path) -> None:
    """On SQLite (which plans without statistics) it once went by the status index, reading every finished
    row for each upload: the web side's cost grew with the work done."""
    path = tmp_path / "plan.sqlite3"
    await db.apply_migrations(f"sqlite://{path}")
    with sqlite3.connect(path) as connection:
        values = ["a" * 64, "done", 1, "resnet50", "random", "2026-01-01"]
        plan = connection.execute(f"EXPLAIN QUERY PLAN {earlier_result_sql('sqlite')}", values).fetchall()
        newest = connection.execute(f"EXPLAIN QUERY PLAN {newest_sql('sqlite', 2)}", [1, "a", "b"]).fetchall()
    assert len(plan) == 1 and "(image_sha256=? AND status=?)" in plan[0][-1], plan
    # Not by the person's index, which reads all their history (SQLite chose it when the person was asked).
    searches = [step[-1] for step in newest if "SEARCH" in step[-1]]
    assert len(searches) == 1 and "(image_sha256=?)" in searches[0], newest
