"""An image that waits in the database (a collection item, an async job) is decoded once: the feeder takes
the pixels its process kept as it accepted the image (app/services.py's KeptPixels), and decodes the stored
original again only when they are not there (another process accepted it, or the bound let them go)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from litestar import Litestar
from redis.exceptions import OutOfMemoryError

from app import services as services_module
from app.jobs import producer
from app.services import KeptPixels
from tests import samples
from tests.conftest import CountingClassifier
from tests.helpers import eventually
from tests.test_feeder import pngs
from tests.web.test_collections_api import as_files, create, finished

Client = httpx.AsyncClient


@pytest.fixture
def decodes(app: Litestar, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """How many images the app's decode pool checked (one per call of `check`)."""
    decoder = app.state.services.decoder
    checked = decoder.check
    counted = [0]

    async def counting(*args: Any, **kwargs: Any) -> Any:
        counted[0] += 1
        return await checked(*args, **kwargs)

    monkeypatch.setattr(decoder, "check", counting)
    yield counted


async def async_job(client: Client, auth: dict[str, str], seed: int) -> str:
    """An upload with `wait=false`: its id."""
    response = await client.post(
        "/api/predictions",
        headers=auth,
        params={"wait": "false"},
        files={"file": ("a.png", samples.photo(seed, (64, 48), "PNG"))},
    )
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


async def until_done(client: Client, auth: dict[str, str], prediction_id: str) -> None:
    async def done() -> bool:
        response = await client.get(f"/api/predictions/{prediction_id}", headers=auth)
        return bool(response.json()["status"] == "done")

    await eventually(done, seconds=30, what="the async job to finish")


async def test_a_collections_images_are_decoded_once(
    client: Client, auth: dict[str, str], worker: CountingClassifier, decodes: list[int], app: Litestar
) -> None:
    services = app.state.services
    services.kept = KeptPixels(services.kept.limit)  # none of earlier tests' (kept again when a round failed)
    body = await create(client, auth, files=as_files(pngs(31_000, 12)))
    assert (await finished(client, auth, body["id"]))["done"] == 12
    assert decodes[0] == 12 and worker.images == 12  # read once, fed with the same pixels
    assert len(app.state.services.kept) == 0  # nothing left behind


async def test_an_async_job_is_decoded_once(
    client: Client, auth: dict[str, str], worker: CountingClassifier, decodes: list[int]
) -> None:
    await until_done(client, auth, await async_job(client, auth, 31_100))
    assert decodes[0] == 1


async def test_without_kept_pixels_the_stored_original_is_decoded_again(
    client: Client, auth: dict[str, str], worker: CountingClassifier, decodes: list[int], app: Litestar
) -> None:
    services = app.state.services
    kept = services.kept
    services.kept = KeptPixels(0)  # as if another web process had accepted the images
    try:
        body = await create(client, auth, files=as_files(pngs(31_200, 5)))
        assert (await finished(client, auth, body["id"]))["done"] == 5
    finally:
        services.kept = kept
    assert decodes[0] == 10 and worker.images == 5


def test_kept_pixels_are_bounded_in_number_and_in_time(monkeypatch: pytest.MonkeyPatch) -> None:
    kept = KeptPixels(2)
    kept.keep("a", b"1")
    kept.keep("b", b"2")
    kept.keep("c", b"3")  # over the bound: not kept (the feeder decodes it again)
    assert len(kept) == 2 and kept.take("c") is None
    assert kept.take("a") == b"1" and kept.take("a") is None  # taken once
    monkeypatch.setattr(services_module, "KEPT_PIXELS_S", -1.0)  # everything kept is now too old
    kept.keep("d", b"4")
    assert kept.take("b") is None and kept.take("d") == b"4"


async def test_a_round_that_cannot_enqueue_keeps_its_pixels_and_backs_off(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    worker: Any,
    app: Litestar,
    decodes: list[int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found in review: with Redis full, every round (one each 0.3 s) threw away the pixels kept as the image
    was accepted and decoded its stored original again: 45 decodes in 3 s for 5 waiting images."""
    enqueue_bulk, tries = producer.enqueue_bulk, []

    async def full(*args: Any, **kwargs: Any) -> None:
        tries.append(1)
        raise OutOfMemoryError("OOM command not allowed when used memory > 'maxmemory' (a test's full Redis)")

    monkeypatch.setattr(producer, "enqueue_bulk", full)
    prediction_id = await async_job(client, auth, 32_000)

    async def tried() -> bool:  # the feeder may be waiting out a pause an earlier test's failures set (up to 10 s)
        return bool(tries)

    await eventually(tried, what="a round to try to enqueue it")
    await asyncio.sleep(4)
    assert decodes[0] == 1  # as it was accepted, not again
    assert len(tries) <= 4  # a round, then pauses of 1, 2 and 4 s
    monkeypatch.setattr(producer, "enqueue_bulk", enqueue_bulk)  # room again
    await until_done(client, auth, prediction_id)
    assert decodes[0] == 1 and worker.images == 1
