"""The statements written out for speed (app/models.py) do what the query builder's would."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import uuid4

import httpx
from litestar import Litestar
from tortoise.transactions import in_transaction

from app.jobs.results import result_fields
from app.models import Prediction, Status, finish_queued
from app.settings import Settings
from tests.test_predictions import a_prediction

RESULT = result_fields([(9, 0.6), (8, 0.2), (7, 0.1), (6, 0.05), (5, 0.05)], "keras-3")


async def test_finishing_writes_the_queued_rows_named_and_no_other(
    app: Litestar, client: httpx.AsyncClient, settings: Settings
) -> None:
    sha256 = uuid4().hex * 2
    queued = [
        await a_prediction(settings, sha256, status=Status.QUEUED, finished_at=None, label=None) for _ in range(3)
    ]
    failed = await a_prediction(settings, sha256, status=Status.FAILED, label=None, error="no")
    finished = datetime.now(UTC).replace(microsecond=123000)
    values = RESULT | {"status": Status.DONE, "latency_ms": 12.5, "finished_at": finished}
    named = [str(queued[0].id), str(queued[1].id), str(failed.id)]
    async with in_transaction() as connection:
        assert await finish_queued(named, values, connection) == 2
    assert await finish_queued(named, values) == 0  # finished already: nothing is written twice
    first = await Prediction.get(id=queued[0].id)
    assert (first.status, first.label, first.top5, first.score) == (
        Status.DONE,
        RESULT["label"],
        RESULT["top5"],
        RESULT["score"],
    )
    assert (first.latency_ms, first.finished_at, first.model_version) == (12.5, finished, "keras-3")
    assert (await Prediction.get(id=queued[2].id)).status == Status.QUEUED  # not named
    assert (await Prediction.get(id=failed.id)).status == Status.FAILED  # not queued
