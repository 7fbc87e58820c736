"""Hostile images through the API: each answered 400 with a clear reason within a few seconds, while the
service keeps answering and the web process (this one) never holds the decode: its memory stays put."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from tests import hostile, samples

# Each hostile image and what its 400 must say.
REASONS = {
    "scan_bomb_jpeg": "more than 100 scans",
    "huge_webp": "too large to decode",
    "huge_png": "too large to decode",
    "huge_gif": "too large to decode",
    "text_bomb_png": "metadata is too large",
}
# Peak and lasting growth of this process's resident memory allowed for one hostile upload: the request
# body and its copies (the largest file is 4.6 MB), never a decode (the smallest costs 300 MB).
PEAK_MARGIN = 64 * 2**20
AFTER_MARGIN = 24 * 2**20


@pytest.fixture(scope="session")
def hostile_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return hostile.write_all(tmp_path_factory.getbasetemp() / "hostile")


def memory(field: str) -> int:
    """VmRSS or VmHWM (the peak since `reset_peak`) of this process, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise LookupError(field)


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM starts again from VmRSS


async def poll_live(client: httpx.AsyncClient, stop: asyncio.Event) -> list[int]:
    statuses = []
    while not stop.is_set():
        statuses.append((await client.get("/health/live")).status_code)
        await asyncio.sleep(0.05)
    return statuses


@pytest.mark.parametrize("name", list(REASONS))
async def test_a_hostile_image_is_refused_clearly_and_costs_the_web_process_nothing(
    name: str, client: httpx.AsyncClient, auth: dict[str, str], hostile_files: dict[str, Path], no_worker: None
) -> None:
    data = hostile_files[name].read_bytes()
    for _ in range(3):  # the same path once before measuring, so first-use allocations are not counted
        warm = await client.post("/api/predictions", headers=auth, files={"file": ("x.png", samples.corrupt_png())})
        assert warm.status_code == 400, warm.text
    before = memory("VmRSS")
    reset_peak()
    stop = asyncio.Event()
    polling = asyncio.create_task(poll_live(client, stop))
    started = time.monotonic()
    response = await client.post("/api/predictions", headers=auth, files={"file": (f"{name}.img", data)})
    seconds = time.monotonic() - started
    stop.set()
    live = await polling
    assert response.status_code == 400, response.text
    assert REASONS[name] in response.json()["detail"]
    assert seconds < 5, f"answered after {seconds:.1f} s"
    assert live and set(live) == {200}
    assert (await client.get("/health/live")).status_code == 200
    peak, after = memory("VmHWM") - before, memory("VmRSS") - before
    assert peak < PEAK_MARGIN, f"the web process grew by {peak / 2**20:.0f} MB while refusing {name}"
    assert after < AFTER_MARGIN, f"the web process kept {after / 2**20:.0f} MB after refusing {name}"
