"""Every decode of uploaded bytes, in a small pool of separate processes (pebble's ProcessPool).

Each decode has a wall-clock limit (DECODE_TIMEOUT) and each process an address-space limit
(DECODE_MEMORY_MB above what it holds at start): a process that runs past either is stopped and
replaced, and the upload gets a 400 that says which. The web process sends the bytes and gets back the
224x224 pixels (through shared memory: app/handover.py) or a thumbnail: it never holds a full-size
decode, and a decoder that hangs, crashes or runs out of memory takes only its own process down.

The processes fork from a fork server (multiprocessing's `forkserver`), which imported this module
once: they start in milliseconds, small, without the web process's threads or event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import hashlib
import logging
import multiprocessing
import os
import resource
import signal
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from litestar.exceptions import HTTPException, ServiceUnavailableException
from litestar.status_codes import HTTP_400_BAD_REQUEST, HTTP_507_INSUFFICIENT_STORAGE
from pebble import ProcessExpired, ProcessPool

from app import files, handover, images, stages, thumbnails
from app.settings import Settings
from app.turns import Turns

log = logging.getLogger(__name__)
Result = TypeVar("Result")
OUT_OF_MEMORY = 75  # how a decode process that ran out of address space exits (to be replaced)
# Then a fresh process: whatever a decode leaves behind (a fragmented heap) reaches few others. A fresh
# process costs about 22 ms of CPU (forked, its pages copied as it touches them, its decoder set up: 25 ms
# per decode with one task per process against 3 with a thousand, measured), so 0.2 ms per upload at 100.
TASKS_PER_PROCESS = 500
# With glibc's own thresholds, which move with what a process happened to free before, a decode process can
# settle into giving each photo's buffers back to the kernel and faulting them in afresh for the next: about
# 210 page faults per 640x480 JPEG, 2.34 ms of decode CPU against 1.68 (measured). Fixed instead: up to 16 MB
# of freed memory kept for the next upload; a buffer of 4 MB or more mapped apart and returned at once.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
KEPT_FREE_BYTES, MAPPED_FROM_BYTES = 16 * 2**20, 4 * 2**20


@dataclass(frozen=True)
class Refusal:
    """An image refused in a decode process: the web process raises it as images.ImageRejected."""

    status: int
    detail: str


def address_space() -> int:
    """This process's address space, in bytes (what RLIMIT_AS bounds)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _start_decoding(memory: int) -> None:
    """In each new decode process, before its first task."""
    # pebble ends a process with SIGTERM, then SIGKILL 3 s later; its handler only runs between
    # bytecodes, so a process busy in a C decoder would hold on to its slot (and the pool's channel)
    # for those 3 s. The default action ends it at once. pebble stops a process only while holding
    # the channel's locks, so the one that dies holds none.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    import cv2  # the fork server imported it: the web process itself never does

    cv2.setNumThreads(0)  # one image per process at a time: no thread pool (nor its address space)
    _keep_freed_memory()
    if memory > 0:
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = address_space() + memory
        resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))


def _keep_freed_memory() -> None:
    """glibc's malloc tuned as the comment on KEPT_FREE_BYTES says; nothing where the C library has no `mallopt`."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is not None:
        mallopt(M_MMAP_THRESHOLD, MAPPED_FROM_BYTES)
        mallopt(M_TRIM_THRESHOLD, KEPT_FREE_BYTES)


def _sandboxed(work: Callable[[], Result]) -> Result | Refusal:
    try:
        return work()
    except images.ImageRejected as exc:
        return Refusal(exc.status_code, exc.detail)
    except MemoryError:
        os._exit(OUT_OF_MEMORY)  # the parent answers "too large"; pebble starts a fresh process
    except Exception as exc:  # whatever else a decoder raises on hostile bytes is the file's doing
        return Refusal(HTTP_400_BAD_REQUEST, f"The image is truncated or corrupt: {exc!r}")


class NotStored(NamedTuple):
    """The original could not be written (the disk is full, UPLOAD_DIR is not writable)."""

    errno: int | None
    detail: str


class Decoded(NamedTuple):
    """What a decode process answers for an upload: the checks' results (the pixels went into shared
    memory), when it stored the original (None: it was there already), and the CPU seconds of each stage
    there (app/stages.py)."""

    sha256: str
    extension: str
    stored: int | None
    seconds: dict[str, float]
    not_stored: NotStored | None = None


def _decoded(sent: bytes | int, max_pixels: int, max_cost: int, keep_in: str | None, block: str) -> Decoded | Refusal:
    """In a decode process: an upload (its bytes, or their number when they are in `block`: see
    handover.put_upload) checked and decoded into the shared memory `block`, and kept under `keep_in`
    (UPLOAD_DIR) once it passed, or why it is refused. Stored here rather than from a thread of the web
    process: the thread's hand-over cost the web process more CPU than the write (0.56 ms against 0.27,
    measured)."""

    def work() -> Decoded:
        started = time.process_time()
        data = handover.read_upload(block, sent) if isinstance(sent, int) else sent
        extension, pixels = images.decode(data, max_pixels, max_cost)
        handover.write_pixels(block, pixels)
        decoded = time.process_time()
        sha256 = hashlib.sha256(data).hexdigest()
        hashed = time.process_time()
        stored, failed = None, None
        if keep_in is not None:
            try:
                stored = files.store_original(data, images.stored_path(sha256, extension), Path(keep_in))
            except OSError as exc:  # the disk's fault, not the image's: told apart from a Refusal
                failed = NotStored(exc.errno, str(exc))
        seconds = {"decode": decoded - started, "hash": hashed - decoded, "storage": time.process_time() - hashed}
        return Decoded(sha256, extension, stored, seconds, failed)

    return _sandboxed(work)


def store_failed(failure: NotStored) -> HTTPException:
    """507 when the disk is full, else 503: the upload (an original, a collection's archive) was fine, the
    server could not keep it."""
    log.error("could not store an upload: %s", failure.detail)
    if failure.errno in (errno.ENOSPC, errno.EDQUOT):
        return HTTPException(
            status_code=HTTP_507_INSUFFICIENT_STORAGE,
            detail="The image store is full: nothing new can be stored until an administrator frees space",
        )
    return ServiceUnavailableException(
        detail="The image store cannot be written just now; try again later", headers={"Retry-After": "30"}
    )


def _rendered(data: bytes, max_pixels: int, max_cost: int) -> bytes | Refusal:
    """In a decode process: the thumbnail of an original."""
    return _sandboxed(lambda: thumbnails.preview(data, max_pixels, max_cost))


def _accepted(outcome: Result | Refusal) -> Result:
    """What a decode process answered, unless it refused the image (images.ImageRejected)."""
    if isinstance(outcome, Refusal):
        raise images.reject(outcome.status, outcome.detail)
    return outcome


def _alive() -> bool:
    return True


def _stop(pool: ProcessPool) -> None:
    pool.stop()
    pool.join()


class DecodePool:
    """The decode processes of one web process (or of a test). `start` them, `close` at the end."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._closed = False
        self._pool = self._new_pool()
        self.turns = Turns(settings.decode_processes)
        self.blocks = handover.Blocks(settings.decode_processes)  # one per decode in a turn
        self._previews: dict[str, asyncio.Future[bytes]] = {}  # being rendered, by the original's sha256
        # Where the decode processes keep originals: absolute, as their working directory may differ.
        self._upload_dir = str(settings.upload_dir.resolve())

    def _new_pool(self) -> ProcessPool:
        context = multiprocessing.get_context("forkserver")
        # Imported once, by the fork server (at its first start): each decode process starts with them.
        context.set_forkserver_preload([__name__, "cv2"])
        return ProcessPool(
            max_workers=self.settings.decode_processes,
            max_tasks=TASKS_PER_PROCESS,
            initializer=_start_decoding,
            initargs=(self.settings.decode_memory_mb * 2**20,),
            context=context,
        )

    async def start(self) -> None:
        """Start the processes (and the fork server), so that the first upload does not wait for them."""
        await self._run(_alive)

    async def check(
        self, data: bytes, owner: Hashable = None, disk: files.DiskUsage | None = None
    ) -> images.CheckedImage:
        """Every check an upload must pass (images.check), in a decode process, in `owner`'s turn (the
        user's: see app/turns.py). Raises images.ImageRejected. With `disk`, the original is kept in UPLOAD_DIR
        too (files.store_original, by the decode process) and counted there."""
        settings = self.settings
        images.check_size(data, settings.max_upload_bytes)
        keep_in = None if disk is None else self._upload_dir
        async with self.turns.slot(owner):
            # This process's part: the bytes there, the pixels back.
            # A refusal is a decode that ended normally: its block is kept (raised outside `take`). Retired
            # ones stay attached in their decode process, /dev/shm pages and all, until it lets go of them.
            try:
                with self.blocks.take() as block, stages.stage("decode"):
                    sent = len(data) if handover.put_upload(block, data) else data
                    outcome = await self._schedule(
                        _decoded, sent, settings.max_image_pixels, settings.decode_cost_mb * 2**20, keep_in, block.name
                    )
                    pixels = handover.read_pixels(block) if isinstance(outcome, Decoded) else b""
            except handover.SharedMemoryFull as exc:  # from `take`: nothing was decoded or stored
                log.error("%s", exc)
                raise ServiceUnavailableException(
                    detail="The server is short of memory for decoding just now; try again shortly",
                    headers={"Retry-After": "30"},
                ) from None
        decoded: Decoded = _accepted(outcome)
        for stage, seconds in decoded.seconds.items():
            stages.elsewhere(stage, seconds)
        if decoded.not_stored is not None:
            raise store_failed(decoded.not_stored)
        if disk is not None and decoded.stored is not None:
            disk.wrote(len(data))
        return images.CheckedImage(decoded.sha256, decoded.extension, data, pixels, written_ns=decoded.stored)

    async def forget(self, image: images.CheckedImage, disk: files.DiskUsage) -> None:
        """Remove the original `check` stored for an upload refused after all (files.forget_original): no row
        names it, so no retention run would, and no quota counts it (one account stored without end while no
        worker was alive)."""
        if image.written_ns is not None:
            path = self.settings.upload_dir / image.relative_path
            with contextlib.suppress(OSError):  # left for the disk's walk to count: the refusal stands as it was
                disk.wrote(-await asyncio.to_thread(files.forget_original, path, image.written_ns))

    async def thumbnail(self, sha256: str, relative_path: str, owner: Hashable = None) -> bytes:
        """The preview of a stored original (WebP), rendered once in a decode process and kept beside the
        originals; asked for again while it is rendered, the same rendering answers (twenty requests at once
        rendered it twenty times, each holding the original); it goes on when they have all gone, for the next
        to find kept. FileNotFoundError if the original is gone (another OSError if it cannot be read);
        images.ImageRejected if it no longer passes."""
        kept = thumbnails.thumbnail_path(self.settings.upload_dir, sha256)
        with contextlib.suppress(OSError):  # not kept (or not readable): rendered again
            return await asyncio.to_thread(kept.read_bytes)
        rendering = self._previews.get(sha256)
        if rendering is None:
            rendering = self._previews[sha256] = asyncio.ensure_future(self._render(kept, relative_path, owner))
            rendering.add_done_callback(lambda done: self._forget_preview(sha256, done))
        return await asyncio.shield(rendering)  # one asker gone, the others still wait for it

    def _forget_preview(self, sha256: str, rendering: asyncio.Future[bytes]) -> None:
        del self._previews[sha256]
        if not rendering.cancelled():
            rendering.exception()  # retrieved: everyone who asked may have gone, and it is theirs to see

    async def _render(self, kept: Path, relative_path: str, owner: Hashable) -> bytes:
        settings = self.settings
        async with self.turns.slot(owner):  # the original is read only once it is this preview's turn
            data = await asyncio.to_thread(Path.read_bytes, settings.upload_dir / relative_path)
            rendered: bytes = await self._run(
                _rendered, data, settings.max_image_pixels, settings.decode_cost_mb * 2**20
            )
        try:
            await asyncio.to_thread(files.write_atomic, kept, rendered)
        except OSError as exc:  # the disk's fault, not the original's: served all the same, rendered again next time
            log.warning("could not keep a preview: %s", exc)
        return rendered

    async def _run(self, function: Callable[..., Any], *args: Any) -> Any:
        """`function(*args)` in a decode process; images.ImageRejected if it refused the image."""
        return _accepted(await self._schedule(function, *args))

    async def _schedule(self, function: Callable[..., Any], *args: Any) -> Any:
        """`function(*args)` in a decode process: what it returned, a Refusal included; ImageRejected if it
        did not end normally. Cancelling the caller stops the process (pebble replaces it), so a request
        given up on frees its slot at once."""
        timeout = self.settings.decode_timeout
        for attempt in (1, 2):
            pool = self._pool
            try:
                result = await asyncio.wrap_future(pool.schedule(function, args, timeout=timeout))
            except TimeoutError:
                raise images.reject(
                    HTTP_400_BAD_REQUEST, f"The image took too long to decode (more than {timeout:g} s)"
                ) from None
            except ProcessExpired as exc:
                raise images.reject(HTTP_400_BAD_REQUEST, self._expired(exc.exitcode)) from None
            except (BrokenProcessPool, RuntimeError):
                # pebble gives up on a pool whose idle process died (killed from outside): a new pool, once.
                if self._closed or attempt == 2:
                    raise
                self._replace(pool)
                continue
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    def _expired(self, exitcode: int | None) -> str:
        if exitcode == OUT_OF_MEMORY:
            return f"The image is too large to decode within {self.settings.decode_memory_mb} MB of memory"
        log.warning("a decode process ended abnormally (exit status %s)", exitcode)
        return f"The image could not be decoded: the decoder crashed (exit status {exitcode})"

    def _replace(self, broken: ProcessPool) -> None:
        if self._pool is broken:
            log.error("the decode pool broke; starting a new one")
            self._pool = self._new_pool()
            threading.Thread(target=_stop, args=(broken,), name="decode-pool-stop", daemon=True).start()

    def close(self) -> None:
        """Stop every decode process (blocking: a fraction of a second)."""
        self._closed = True
        _stop(self._pool)
        self.blocks.close()
