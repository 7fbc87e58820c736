"""Pixels back from a decode process through shared memory (app/handover.py): a block is reused after a
decode that ended normally, retired after one that did not (its process might still write into it), and
nothing is left in /dev/shm once the pool is closed."""

from __future__ import annotations

import asyncio
import hashlib
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app import handover, images
from app.sandbox import DecodePool
from tests import samples
from tests.helpers import eventually
from tests.test_sandbox import SLOW, cancelled_mid_decode, decode_pool, with_timeout

SHM = Path("/dev/shm")
ROOT = Path(__file__).resolve().parents[1]


def block_names(pool: DecodePool) -> set[str]:
    return {block.name for block in pool.blocks._free}


def in_shm(names: set[str]) -> set[str]:
    return {name for name in names if (SHM / name).exists()}


async def test_the_pixels_come_back_through_a_block_that_is_then_reused() -> None:
    data = samples.photo(1320, (640, 480))
    async with decode_pool() as pool:
        before = block_names(pool)
        assert len(before) == 1 and in_shm(before) == before
        assert (await pool.check(data)).pixels == images.check(data, 10**7, 10**8, 10**9).pixels
        with pytest.raises(images.ImageRejected):
            await pool.check(b"not an image" * 1000)
        # A refusal ends the decode normally: the block is kept. Retired, it would stay attached in the
        # decode process with the upload's pages of /dev/shm (a container has 64 MB of it).
        assert block_names(pool) == before
        other = samples.photo(1321, (640, 480))
        assert (await pool.check(other)).pixels == images.check(other, 10**7, 10**8, 10**9).pixels
        assert block_names(pool) == before  # a decode that ended normally gives its block back


async def test_an_upload_goes_in_the_block_when_it_fits_and_through_the_pipe_when_not() -> None:
    small = samples.photo(1330, (640, 480))
    noise = np.random.default_rng(1330).integers(0, 256, (900, 1000, 3), dtype=np.uint8)
    large = samples.encode(Image.fromarray(noise), "PNG")  # incompressible: larger than the room
    assert len(small) <= handover.UPLOAD_ROOM < len(large)
    async with decode_pool() as pool:
        [block] = pool.blocks._free
        assert (await pool.check(small)).pixels == images.check(small, 10**7, 10**8, 10**9).pixels
        assert block.buf is not None
        assert bytes(block.buf[images.INPUT_BYTES : images.INPUT_BYTES + len(small)]) == small  # sent this way
        checked = await pool.check(large)
        assert checked.pixels == images.check(large, 10**7, 10**8, 10**9).pixels
        assert checked.sha256 == hashlib.sha256(large).hexdigest()


async def test_a_block_whose_decode_timed_out_is_retired_and_removed() -> None:
    async with decode_pool() as pool:
        before = block_names(pool)
        with_timeout(pool, 0.3)
        with pytest.raises(images.ImageRejected):
            await pool.check(SLOW)
        with_timeout(pool, 60)
        after = block_names(pool)
        assert len(after) == 1 and not after & before
        assert in_shm(before) == set() and in_shm(after) == after
        data = samples.photo(1322)
        assert (await pool.check(data)).pixels == images.check(data, 10**7, 10**8, 10**9).pixels


async def test_a_block_whose_decode_was_cancelled_is_retired(long_sigterm_grace: None) -> None:
    async with decode_pool() as pool:
        before = block_names(pool)
        await cancelled_mid_decode(pool)
        assert not block_names(pool) & before and in_shm(before) == set()


async def test_closing_the_pool_removes_its_blocks() -> None:
    async with decode_pool(decode_processes=3) as pool:
        names = block_names(pool)
        await asyncio.gather(*(pool.check(samples.photo(1323 + i)) for i in range(6)))
        assert block_names(pool) == names and in_shm(names) == names
    assert in_shm(names) == set()


def test_a_decode_process_keeps_few_blocks_attached() -> None:
    blocks = handover.Blocks(handover.MAX_ATTACHED + 4)
    try:
        for i, block in enumerate(list(blocks._free)):
            pixels = bytes([i]) * images.INPUT_BYTES
            handover.write_pixels(block.name, pixels)
            assert handover.read_pixels(block) == pixels
            assert len(handover._attached) <= handover.MAX_ATTACHED
    finally:
        for attached in handover._attached.values():
            attached.close()
        handover._attached.clear()
        blocks.close()


def test_a_block_past_the_count_is_made_and_then_released() -> None:
    blocks = handover.Blocks(1)
    try:
        with blocks.take() as first, blocks.take() as second:
            assert first.name != second.name and in_shm({first.name, second.name}) == {first.name, second.name}
        assert [block.name for block in blocks._free] == [second.name] and in_shm({first.name}) == set()
    finally:
        blocks.close()


CRASH = """
import asyncio, dataclasses, os, signal
from app.sandbox import DecodePool
from app.settings import Settings

async def main():
    pool = DecodePool(dataclasses.replace(Settings(), decode_processes=2))
    await pool.start()
    print(" ".join(block.name for block in pool.blocks._free), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""


async def test_a_web_process_killed_outright_leaves_no_block() -> None:
    # multiprocessing's resource tracker outlives the process and removes what it had registered.
    crashed = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CRASH, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    out, _ = await crashed.communicate()
    names = set(out.decode().split())
    assert len(names) == 2 and crashed.returncode == -signal.SIGKILL

    async def removed() -> bool:
        return in_shm(names) == set()

    await eventually(removed, what="the resource tracker to remove the killed process's blocks", seconds=30)


SMALL_SHM = """
import asyncio, dataclasses, os
from litestar.exceptions import ServiceUnavailableException
from PIL import Image
from app import handover
from app.sandbox import DecodePool
from app.settings import Settings
from tests import samples

def noise_png(side):  # about as many bytes as pixels: 1.9 MB at 800x800
    return samples.encode(Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)), "PNG")

async def main():
    try:
        pool = DecodePool(dataclasses.replace(Settings(), decode_processes=1))
    except handover.SharedMemoryFull as exc:
        print("not started:", exc, flush=True)
        return
    await pool.start()
    try:
        print("decoded", len((await pool.check(noise_png(800))).pixels), flush=True)
        with pool.blocks.take():  # the pool's one block: the next upload needs another
            try:
                await pool.check(noise_png(100))
            except ServiceUnavailableException as exc:
                print("refused", exc.status_code, exc.headers["Retry-After"], exc.detail, flush=True)
        print("decoded", len((await pool.check(noise_png(800))).pixels), flush=True)
    finally:
        await asyncio.to_thread(pool.close)

asyncio.run(main())
"""


def with_small_shm(megabytes: int) -> subprocess.CompletedProcess[str]:
    """SMALL_SHM under a /dev/shm of its own, of `megabytes` (a tmpfs in a mount namespace of its own)."""
    mount = f'mount -t tmpfs -o size={megabytes}M tmpfs /dev/shm && exec "$0" -c "$1"'
    command = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", mount, sys.executable, SMALL_SHM]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def small_shm() -> None:
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"needs `unshare --user --mount` (user namespaces): {probe.stderr.decode().strip()}")


@pytest.mark.usefixtures("small_shm")
def test_a_dev_shm_too_small_for_the_blocks_stops_the_start_with_the_reason() -> None:
    # Before, the pool started on sparse blocks, and a 1.9 MB upload killed the web process (SIGBUS).
    done = with_small_shm(1)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.startswith("not started: /dev/shm has no room for a decode block of 2.1 MB"), done.stdout
    assert "DECODE_PROCESSES" in done.stdout


@pytest.mark.usefixtures("small_shm")
def test_an_upload_that_finds_dev_shm_full_is_503_and_the_next_one_is_decoded() -> None:
    done = with_small_shm(3)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.splitlines() == [
        f"decoded {images.INPUT_BYTES}",
        "refused 503 30 The server is short of memory for decoding just now; try again shortly",
        f"decoded {images.INPUT_BYTES}",
    ]
