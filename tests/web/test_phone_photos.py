"""What phones produce, through the API: HEIC (an iPhone's default) and AVIF, decoded in the decode processes
like every upload, upright as their orientation says, stored under their own extension, with a thumbnail."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from redis.asyncio import Redis

from app.settings import Settings
from tests import samples
from tests.conftest import reset_queue, running_worker
from tests.web.test_collections_api import finished


@dataclass
class Recording:
    """A classifier that keeps the pixels it was given: what the decode process made of the upload."""

    inner: Any
    seen: list[np.ndarray] = field(default_factory=list)

    @property
    def info(self) -> Any:
        return self.inner.info

    def predict(self, pixels: Any) -> list[list[tuple[int, float]]]:
        self.seen.extend(np.asarray(pixels, dtype=np.uint8).reshape(-1, 224, 224, 3))
        result: list[list[tuple[int, float]]] = self.inner.predict(pixels)
        return result


@pytest.fixture
async def recording(
    redis: Redis, classifier: Any, settings: Settings, client: httpx.AsyncClient
) -> AsyncIterator[Recording]:
    await reset_queue(redis)
    recorder = Recording(classifier)
    async with running_worker(redis, recorder, settings):
        yield recorder


@pytest.mark.parametrize(
    ("fmt", "extension", "name"), [("HEIF", "heic", "IMG_0001.HEIC"), ("AVIF", "avif", "photo.avif")]
)
async def test_a_phone_photo_is_classified_upright_and_kept_as_it_came(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    recording: Recording,
    settings: Settings,
    fmt: str,
    extension: str,
    name: str,
) -> None:
    # 300x200, red left and blue right, to be turned 90 degrees clockwise (EXIF orientation 6): upright it
    # is 200x300, red on top.
    data = samples.with_exif_orientation(samples.half_red_half_blue(), 6, fmt)
    response = await client.post("/api/predictions", headers=auth, files={"file": (name, data)})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "done"

    [pixels] = recording.seen
    top, bottom = pixels[10, 112].astype(int), pixels[213, 112].astype(int)
    assert top[0] > 200 and top[2] < 60, "the orientation was not applied"
    assert bottom[2] > 200 and bottom[0] < 60

    sha = body["image_sha256"]
    assert (settings.upload_dir / sha[:2] / f"{sha}.{extension}").read_bytes() == data

    thumbnail = await client.get(f"/predictions/{body['id']}/image", headers=auth)  # rendered in a decode process
    assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/webp"
    preview = np.asarray(Image.open(io.BytesIO(thumbnail.content)).convert("RGB"))
    assert preview.shape == (300, 200, 3)  # upright: 200 wide, 300 high
    assert preview[20, 100, 0] > 200 and preview[280, 100, 2] > 200  # red on top, blue below


async def test_a_collection_takes_heic_and_avif(
    client: httpx.AsyncClient, auth: dict[str, str], recording: Recording
) -> None:
    files = [
        ("files", ("IMG_0002.HEIC", samples.photo(14_600, fmt="HEIF"))),
        ("files", ("IMG_0003.avif", samples.photo(14_601, fmt="AVIF"))),
        ("files", ("IMG_0004.HEIC", samples.photo(14_602)[:300])),  # a JPEG cut short, named as a HEIC
    ]
    response = await client.post("/api/collections", headers=auth, files=files)
    assert response.status_code == 202, response.text
    # Read in the background, then fed to the worker from the stored originals: decoded again there.
    assert await finished(client, auth, response.json()["id"]) == {"total": 3, "queued": 0, "done": 2, "failed": 1}
    assert len(recording.seen) == 2
