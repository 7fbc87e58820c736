"""The decode processes (app/sandbox.py): a decode past its time or memory limit is stopped with a clear
400, its process replaced, and the pool serves the next image; nothing is left running."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import errno
import io
import os
import resource
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from litestar.exceptions import ServiceUnavailableException
from PIL import Image

from app import files, images, thumbnails
from app.sandbox import MAPPED_FROM_BYTES, DecodePool, NotStored, store_failed
from app.settings import Settings
from app.turns import Turns
from bench.images import make_image
from tests import hostile, samples
from tests.helpers import alive, eventually, status_of

# 94 scans (under the limit of 100), each a pass over a 4096x4096 image: about 1.3 s to decode here.
SLOW = hostile.scan_bomb_jpeg(repeats=84)


@asynccontextmanager
async def decode_pool(**changes: Any) -> AsyncIterator[DecodePool]:
    """A pool of one process unless told (so that its pid says whether it was replaced), whose decodes may
    take a minute unless told: a stalled machine must not make a test's ordinary decode "too long"."""
    pool = DecodePool(dataclasses.replace(Settings(), **{"decode_processes": 1, "decode_timeout": 60, **changes}))
    await pool.start()
    try:
        yield pool
    finally:
        await asyncio.to_thread(pool.close)


async def pid_of(pool: DecodePool) -> int:
    pid: int = await pool._run(os.getpid)
    return pid


def with_timeout(pool: DecodePool, seconds: float) -> None:
    """The pool's decodes from now on may take `seconds` (the process up and its pid known first: under a
    short limit, a stalled machine could find even those too long)."""
    pool.settings = dataclasses.replace(pool.settings, decode_timeout=seconds)


def cpu_ticks(pid: int) -> int:
    """The CPU time process `pid` has used so far (user and system), in clock ticks: unlike a wall-clock time,
    not stretched by a machine busy with other work."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def asked_to_end(pid: int) -> bool:
    """SIGTERM is pending for process `pid` (sent while it is stopped, it waits for SIGCONT), or it has ended."""
    try:
        pending = status_of(pid)["ShdPnd"].strip()
    except FileNotFoundError:
        return True
    return bool(int(pending, 16) & 1 << (signal.SIGTERM - 1))


async def cancelled_mid_decode(pool: DecodePool) -> int:
    """Start decoding SLOW, and cancel it while the pool's (only, idle) process is at work on it; its pid.
    From the moment it is seen spending CPU on the decode until pebble has asked it to end, the process is
    stopped (SIGSTOP): however slow the machine, the cancellation lands mid-decode (after a fixed 0.3 s, the
    decode could have not begun, or ended). With long_sigterm_grace: else pebble's SIGKILL, 3 s after its
    SIGTERM, may end the process before a busy machine has seen the SIGTERM."""
    pid = await pid_of(pool)
    used = cpu_ticks(pid)
    decoding = asyncio.create_task(pool.check(SLOW))

    async def at_work() -> bool:  # a tick or so may be charged to it for the last task's end: two, then
        return cpu_ticks(pid) > used + 1

    async def stopped() -> bool:  # SIGSTOP takes effect once the process next runs: a while, on a busy machine
        return status_of(pid)["State"].split()[0] == "T"

    async def stopping() -> bool:
        return asked_to_end(pid)

    await eventually(at_work, seconds=60, what="the decode process to start decoding")
    os.kill(pid, signal.SIGSTOP)
    await eventually(stopped, seconds=60, what="the decode process to stop")
    decoding.cancel()
    with pytest.raises(asyncio.CancelledError):
        await decoding
    await eventually(stopping, seconds=60, what="pebble to stop the process of the cancelled decode")
    with contextlib.suppress(ProcessLookupError):  # ended already by pebble's SIGTERM: what is asked
        os.kill(pid, signal.SIGCONT)
    return pid


def ended(pid: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return not alive(pid)

    return check


async def assert_serves(pool: DecodePool, seed: int) -> None:
    data = samples.photo(seed)
    assert (await pool.check(data)).pixels == images.check(data, 10**7, 10**8, 10**9).pixels


async def test_a_decode_gives_what_the_checks_give_in_process() -> None:
    data = samples.photo(1300, (640, 480))
    async with decode_pool() as pool:
        assert await pool.check(data) == images.check(data, 10**7, 10**8, 10**9)
        with pytest.raises(images.ImageRejected) as caught:
            await pool.check(b"not an image")
        assert caught.value.status_code == 415


async def test_the_decode_process_keeps_an_original_that_passed_once_and_counts_it(tmp_path: Path) -> None:
    data = samples.photo(1301, (640, 480))
    disk = files.DiskUsage()
    async with decode_pool(upload_dir=tmp_path) as pool:
        checked = await pool.check(data, disk=disk)
        stored = tmp_path / checked.relative_path
        assert stored.read_bytes() == data and disk.used == len(data) and checked.new
        # the second upload stored nothing: it may be looked up in the result cache
        assert await pool.check(data, disk=disk) == dataclasses.replace(checked, written_ns=None)
        assert disk.used == len(data)  # there already: not counted twice
        with pytest.raises(images.ImageRejected):
            await pool.check(b"GIF89a" + b"\0" * 40, disk=disk)
        await pool.check(samples.photo(1302), disk=None)  # only checked
    assert [p.name for p in await asyncio.to_thread(lambda: list(tmp_path.rglob("*.*")))] == [stored.name]


async def test_an_original_the_disk_cannot_take_is_the_servers_fault_not_the_images(tmp_path: Path) -> None:
    (tmp_path / "not-a-directory").write_bytes(b"")
    disk = files.DiskUsage()
    async with decode_pool(upload_dir=tmp_path / "not-a-directory") as pool:
        with pytest.raises(ServiceUnavailableException) as caught:
            await pool.check(samples.photo(1303), disk=disk)
    assert caught.value.status_code == 503 and "try again later" in caught.value.detail
    assert disk.used == 0
    full = store_failed(NotStored(errno.ENOSPC, "No space left on device"))
    assert full.status_code == 507 and "full" in full.detail


async def test_the_process_is_small_single_threaded_and_limited_relative_to_its_start() -> None:
    async with decode_pool(decode_memory_mb=100) as pool:
        pid = await pid_of(pool)
        status = status_of(pid)
        assert int(status["Threads"]) == 1  # none of the web process's threads
        assert int(status["VmRSS"].split()[0]) < 100_000  # kB
        size = int(status["VmSize"].split()[0]) * 1024
        soft, _ = await pool._run(resource.getrlimit, resource.RLIMIT_AS)
        assert abs(soft - 100 * 2**20 - size) < 32 * 2**20  # its budget above what it held at start


async def minor_faults(pool: DecodePool) -> int:
    """The page faults of the pool's process so far that read no disk (a page given back, then touched anew).
    Asked with the standard library's own function: importing this module there would change its heap."""
    usage = await pool._run(resource.getrusage, resource.RUSAGE_SELF)
    return int(usage.ru_minflt)


async def test_a_decode_process_keeps_its_memory_between_uploads() -> None:
    # With glibc's own thresholds a decode process could settle into faulting in about 210 pages afresh for
    # each 640x480 photo (2.34 ms of decode CPU against 1.68); keeping its memory, none.
    data = make_image(1302)  # the photo `make bench` sends
    async with decode_pool() as pool:
        for _ in range(5):
            await pool.check(data)
        before = await minor_faults(pool)
        for _ in range(20):
            await pool.check(data)
        faults = (await minor_faults(pool) - before) / 20
        # And whatever the process did before: glibc's own threshold moves as large buffers are freed.
        mapped = await pool._run(mapped_after_a_larger_buffer_was_freed)
    assert faults < 20, faults
    assert mapped >= MAPPED_FROM_BYTES


class MallocInfo(ctypes.Structure):
    """glibc's `struct mallinfo2`, in bytes."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in [
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        ]
    ]


def mapped_after_a_larger_buffer_was_freed() -> int:
    """In a process: the bytes malloc maps apart for a buffer past sandbox.MAPPED_FROM_BYTES just after a
    larger one was freed (with glibc's defaults, none: the freed one raised its threshold past both)."""
    mallinfo2 = ctypes.CDLL(None).mallinfo2
    mallinfo2.restype = MallocInfo
    freed = bytearray(MAPPED_FROM_BYTES + 2**20)
    del freed
    before = mallinfo2().hblkhd
    buffer = bytearray(MAPPED_FROM_BYTES + 2**19)
    mapped = int(mallinfo2().hblkhd - before)
    del buffer
    return mapped


async def test_a_decode_past_the_time_limit_is_killed_and_the_pool_goes_on(long_sigterm_grace: None) -> None:
    assert images.jpeg_scans(SLOW) <= images.MAX_SCANS
    async with decode_pool() as pool:
        before = await pid_of(pool)
        with_timeout(pool, 0.3)
        started = time.monotonic()
        with pytest.raises(images.ImageRejected) as caught:
            await pool.check(SLOW)
        assert time.monotonic() - started < 30  # the kill is at once, not after pebble's SIGTERM grace (60 s)
        assert caught.value.status_code == 400
        assert caught.value.detail == "The image took too long to decode (more than 0.3 s)"
        assert not alive(before)
        with_timeout(pool, 60)
        await assert_serves(pool, 1301)
        assert await pid_of(pool) != before


async def test_a_decode_past_the_memory_limit_is_refused_and_its_process_replaced() -> None:
    # 4000x3000 RGB: within the cost budget (46 MB), not within 40 MB of address space.
    data = samples.encode(Image.new("RGB", (4000, 3000), (10, 20, 30)), "PNG")
    async with decode_pool(decode_memory_mb=40) as pool:
        before = await pid_of(pool)
        with pytest.raises(images.ImageRejected) as caught:
            await pool.check(data)
        assert caught.value.status_code == 400
        assert caught.value.detail == "The image is too large to decode within 40 MB of memory"
        await eventually(ended(before), what="the process over its memory to end")
        await assert_serves(pool, 1302)
        assert await pid_of(pool) != before


async def test_a_gif_of_200000_frames_costs_its_first_frame_only() -> None:
    """A GIF frame takes about 20 bytes: 4.6 MB hold 200,000 of them on a 1000x1000 canvas. Only the first
    is decoded, in milliseconds and a few MB (it was refused, as if every frame were decoded)."""
    data = hostile.many_frame_gif()
    async with decode_pool(decode_memory_mb=32) as pool:
        before = await pid_of(pool)
        used = cpu_ticks(before)
        checked = await pool.check(data)
        ticks = cpu_ticks(before) - used  # CPU, not wall-clock, time: a busy machine does not stretch it
        assert checked.extension == "gif" and checked.pixels == bytes(224 * 224 * 3)  # all black
        assert await pid_of(pool) == before  # within its 32 MB
    assert ticks < 0.5 * os.sysconf("SC_CLK_TCK"), f"{ticks} ticks"


async def test_a_webp_too_large_is_refused_from_its_header_before_libwebp_reserves_its_canvases() -> None:
    """Opening a WebP made libwebp reserve two RGBA canvases, before any check: 488 MB of address space for
    7999x7999 (38 bytes). Past a decode process's limit that answered "truncated or corrupt: could not create
    decoder object"; an 11000x11000 one (past MAX_IMAGE_PIXELS, under Pillow's own bound of twice it) did so
    within the default 512 MB. Now both are judged from the header, in 64 MB, and normal WebPs still pass."""
    async with decode_pool(decode_memory_mb=64) as pool:
        before = await pid_of(pool)
        with pytest.raises(images.ImageRejected) as caught:
            await pool.check(hostile.huge_webp())
        assert caught.value.detail == (
            "The image is too large to decode: 7999x7999 pixels (RGB) would take 976 MB, more than 192 MB"
        )
        with pytest.raises(images.ImageRejected) as caught:
            await pool.check(hostile.webp_claiming(11000, 11000))
        assert (
            caught.value.detail == "The image is too large to decode safely: 11000x11000 pixels is more than 64000000"
        )
        still = samples.encode(Image.new("RGB", (1200, 900), (200, 30, 30)), "WEBP")
        frames = [Image.new("RGBA", (800, 600), color) for color in ((200, 30, 30, 255), (30, 30, 200, 255))]
        moving = samples.encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=40)
        for data in (still, moving):
            checked = await pool.check(data)
            assert checked.extension == "webp" and list(checked.pixels[:3]) == pytest.approx([200, 30, 30], abs=8)
        assert await pid_of(pool) == before


async def test_cancelling_a_decode_stops_its_process(long_sigterm_grace: None) -> None:
    async with decode_pool() as pool:
        before = await cancelled_mid_decode(pool)
        # At once (SIGTERM), not after pebble's grace (SIGKILL, a minute later).
        await eventually(ended(before), what="the cancelled decode's process to end", seconds=30)
        await assert_serves(pool, 1303)


async def test_an_idle_process_killed_from_outside_is_replaced() -> None:
    async with decode_pool() as pool:
        before = await pid_of(pool)
        os.kill(before, signal.SIGKILL)

        async def given_up() -> bool:
            return not pool._pool.active

        await eventually(given_up, seconds=60, what="pebble to notice and give the whole pool up")
        await assert_serves(pool, 1304)  # in a new one
        assert await pid_of(pool) != before


async def test_closing_leaves_no_process() -> None:
    async with decode_pool() as pool:
        pid = await pid_of(pool)
    assert not alive(pid)


async def test_thumbnails_are_rendered_in_the_pool_and_kept(tmp_path: Path) -> None:
    data = samples.photo(1305, (1200, 900))
    checked = images.check(data, 10**7, 10**8, 10**9)
    (tmp_path / checked.relative_path).parent.mkdir(parents=True)
    (tmp_path / checked.relative_path).write_bytes(data)
    hostile_path = tmp_path / "ff" / "hostile.webp"
    hostile_path.parent.mkdir()
    hostile_path.write_bytes(hostile.huge_webp())
    async with decode_pool(upload_dir=tmp_path) as pool:
        preview = await pool.thumbnail(checked.sha256, checked.relative_path)
        assert Image.open(thumbnails.thumbnail_path(tmp_path, checked.sha256)).size == (384, 288)
        assert thumbnails.thumbnail_path(tmp_path, checked.sha256).read_bytes() == preview
        with pytest.raises(images.ImageRejected, match="too large to decode"):
            await pool.thumbnail("f" * 64, "ff/hostile.webp")
        with pytest.raises(FileNotFoundError):
            await pool.thumbnail("e" * 64, "ee/gone.jpg")


async def test_a_preview_over_the_decode_budget_is_rendered_from_the_uploads_draft(tmp_path: Path) -> None:
    """Found in review: a long JPEG passed its upload's check drafted to 224 (1/4 scale) but its preview,
    drafted to 768 (full scale here), was over the same decode budget: every preview of an accepted upload
    was refused as "too large to decode"."""
    data = hostile.long_cmyk_jpeg()
    checked = images.check(data, 10**7, Settings().max_image_pixels, Settings().decode_cost_mb * 2**20)
    (tmp_path / checked.relative_path).parent.mkdir(parents=True)
    (tmp_path / checked.relative_path).write_bytes(data)
    async with decode_pool(upload_dir=tmp_path) as pool:
        preview = await pool.thumbnail(checked.sha256, checked.relative_path)
    assert max(Image.open(io.BytesIO(preview)).size) == thumbnails.THUMBNAIL_SIZE
    assert thumbnails.thumbnail_path(tmp_path, checked.sha256).read_bytes() == preview


async def test_a_preview_that_cannot_be_kept_is_still_returned(tmp_path: Path) -> None:
    """Found in review: when keeping a rendered preview failed (a full disk; here a file where its folder
    goes), the preview was lost and the OSError read as "the original is gone"."""
    data = samples.photo(1307, (1200, 900))
    checked = images.check(data, 10**7, 10**8, 10**9)
    (tmp_path / checked.relative_path).parent.mkdir(parents=True)
    (tmp_path / checked.relative_path).write_bytes(data)
    kept = thumbnails.thumbnail_path(tmp_path, checked.sha256)
    kept.parent.parent.mkdir()
    kept.parent.write_bytes(b"")  # a file where the preview's folder must go: writing it fails for real
    async with decode_pool(upload_dir=tmp_path) as pool:
        preview = await pool.thumbnail(checked.sha256, checked.relative_path)
        assert Image.open(io.BytesIO(preview)).size == (384, 288)
        assert await pool.thumbnail(checked.sha256, checked.relative_path) == preview  # rendered again
    assert kept.parent.read_bytes() == b""


async def test_a_preview_asked_for_many_times_at_once_is_rendered_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: twenty requests at once for a preview not yet kept each read the original (up to
    10 MB, before waiting for a turn) and rendered it in the shared decode processes."""
    data = samples.photo(1306, (1200, 900))
    checked = images.check(data, 10**7, 10**8, 10**9)
    (tmp_path / checked.relative_path).parent.mkdir(parents=True)
    (tmp_path / checked.relative_path).write_bytes(data)
    async with decode_pool(upload_dir=tmp_path) as pool:
        run, rendered = pool._run, 0

        async def counted(function: Any, *args: Any) -> Any:
            nonlocal rendered
            rendered += 1
            return await run(function, *args)

        monkeypatch.setattr(pool, "_run", counted)
        asking = [pool.thumbnail(checked.sha256, checked.relative_path, owner=n % 3) for n in range(20)]
        previews = await asyncio.gather(*asking)
    assert rendered == 1 and len(set(previews)) == 1
    assert thumbnails.thumbnail_path(tmp_path, checked.sha256).read_bytes() == previews[0]


async def test_waiting_decodes_are_served_in_turns_across_owners() -> None:
    turns = Turns(1)
    served: list[str] = []

    async def decode(owner: str, name: str) -> None:
        async with turns.slot(owner):
            served.append(name)
            await asyncio.sleep(0.01)

    first = asyncio.create_task(decode("flood", "f0"))
    await asyncio.sleep(0)  # it holds the only slot
    floods = [asyncio.create_task(decode("flood", f"f{i}")) for i in range(1, 6)]
    await asyncio.sleep(0)
    other = asyncio.create_task(decode("other", "o"))
    await asyncio.gather(first, *floods, other)
    assert served[:3] == ["f0", "f1", "o"]  # not behind all five of the flood
    assert turns.free == 1 and not turns.waiting


async def test_a_caller_that_gives_up_leaves_no_slot_taken() -> None:
    turns = Turns(1)
    hold = asyncio.Event()

    async def holder() -> None:
        async with turns.slot("a"):
            await hold.wait()

    held = asyncio.create_task(holder())
    await asyncio.sleep(0)
    waiting = asyncio.create_task(turns._take("b"))
    await asyncio.sleep(0)
    waiting.cancel()
    hold.set()
    await held
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert turns.free == 1 and not turns.waiting


async def test_one_owner_holds_at_most_its_share_of_the_slots() -> None:
    """Collections' readings hold their archives open in such slots: one person's many must leave room."""
    turns = Turns(3, per_owner=2)
    got: list[str] = []
    done = {name: asyncio.Event() for name in ("a1", "a2", "a3", "b1")}

    async def hold(owner: str, name: str) -> None:
        async with turns.slot(owner):
            got.append(name)
            await done[name].wait()

    holders = [asyncio.create_task(hold("a", name)) for name in ("a1", "a2", "a3")]
    await asyncio.sleep(0.01)
    assert got == ["a1", "a2"]  # the third waits, a slot free
    holders.append(asyncio.create_task(hold("b", "b1")))
    await asyncio.sleep(0.01)
    assert got == ["a1", "a2", "b1"]  # the free slot was b's to take at once
    done["a1"].set()
    await asyncio.sleep(0.01)
    assert got == ["a1", "a2", "b1", "a3"]
    for event in done.values():
        event.set()
    await asyncio.gather(*holders)
    assert turns.free == 3 and not turns.held and not turns.waiting


async def test_callers_of_no_owner_take_their_turns() -> None:
    """Found by CI: with the share per owner (11291ce), a slot given back went to no one when the callers
    waiting had no owner (None, as the decode pool's callers that name none): None was also what the search
    for the next owner said when it found none. Six decodes in three slots hung."""
    turns = Turns(3)
    got: list[int] = []

    async def hold(i: int) -> None:
        async with turns.slot(None):
            await asyncio.sleep(0.01)
            got.append(i)

    await asyncio.wait_for(asyncio.gather(*(hold(i) for i in range(6))), 60)
    assert sorted(got) == list(range(6)) and turns.free == 3 and not turns.held and not turns.waiting


async def test_one_users_slow_images_do_not_hold_up_anothers() -> None:
    async with decode_pool() as pool:
        slow = [asyncio.create_task(pool.check(SLOW, owner="hostile")) for _ in range(4)]

        async def in_line() -> bool:
            return pool.turns.held == {"hostile": 1} and len(pool.turns.waiting.get("hostile", ())) == 3

        await eventually(in_line, what="the first of them in a decode, the rest waiting")
        image = await pool.check(samples.photo(1), owner="normal")
        # One turn each: the hostile user's next image (its owner was waiting first), then this one, ahead
        # of the other two.
        assert [task.done() for task in slow] == [True, True, False, False]
        await asyncio.gather(*slow, return_exceptions=True)
    assert image.extension == "jpg"
