"""How the web process and a decode process (app/sandbox.py) pass an upload and the model's input: through a
block of shared memory, not pebble's pipe. The 150 kB of pixels through the pipe cost the web side about half
a millisecond of CPU per upload (pickled, then read in pieces by pebble's thread), the rest of the round
trip about as much again (measured with bench/web_cost.py). The upload goes the same way when it fits in
UPLOAD_ROOM (an 82 kB photo through the pipe cost 0.23 ms more than a 100-byte task, both sides together,
measured); a larger one goes through the pipe, where its decode costs far more than the copy.

A block holds the pixels (INPUT_BYTES), then the upload. Its pages of /dev/shm are reserved when it is made
(posix_fallocate). Unreserved, a block is sparse, and writing into a page that a full /dev/shm cannot supply
is a SIGBUS that kills the web process (a 1.9 MB upload did it under a /dev/shm of 1 MB). Reserved, a full
/dev/shm is an error instead: the app does not start (SharedMemoryFull says why), and an upload that meets it
later gets a 503. A web process holds about DECODE_PROCESSES x 2.2 MB of /dev/shm (a container's default is
64 MB): a retired block's pages go when its decode process, which was stopped, lets go of it.

The web process owns the blocks: one per decode that may run at once. A block whose decode did not end
normally (a timeout, a cancel, a crash) is retired and a new one made: the stopped process might still
write into it, and the next upload must not read its pixels. The blocks live in /dev/shm, 150 kB each; if
the web process is killed outright, multiprocessing's resource tracker removes them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from multiprocessing import shared_memory

from app import images

# A decode process keeps its blocks attached (attaching costs system calls); past this many, it lets go of all.
MAX_ATTACHED = 16
UPLOAD_ROOM = 2 * 2**20  # the largest upload passed in a block: a JPEG photo of up to about 6 MP
BLOCK_BYTES = images.INPUT_BYTES + UPLOAD_ROOM


class SharedMemoryFull(RuntimeError):
    """/dev/shm has no room for another block."""


class Blocks:
    """The web process's blocks; `take` one for each decode, `close` them all at the end."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._free = [_new() for _ in range(count)]
        self._closed = False

    @contextlib.contextmanager
    def take(self) -> Iterator[shared_memory.SharedMemory]:
        """A block for one decode. Callers hold at most `count` at once (turns.Turns); one more would get
        a block of its own, released after."""
        block = self._free.pop() if self._free else _new()
        reusable = False
        try:
            yield block
            reusable = True
        finally:
            wanted = not self._closed and len(self._free) < self.count
            if reusable and wanted:
                self._free.append(block)
            else:
                _release(block)
                if wanted:
                    with contextlib.suppress(SharedMemoryFull):  # the next `take` makes it, or says so
                        self._free.append(_new())

    def close(self) -> None:
        """Release every free block; one still taken is released when its decode ends."""
        self._closed = True
        for block in self._free:
            _release(block)
        self._free.clear()


def read_pixels(block: shared_memory.SharedMemory) -> bytes:
    """The pixels a decode process wrote into `block`."""
    return bytes(_view(block)[: images.INPUT_BYTES])


def put_upload(block: shared_memory.SharedMemory, data: bytes) -> bool:
    """`data` into `block` for a decode process (`read_upload`), if it fits in UPLOAD_ROOM."""
    if len(data) > UPLOAD_ROOM:
        return False
    _view(block)[images.INPUT_BYTES : images.INPUT_BYTES + len(data)] = data
    return True


def _view(block: shared_memory.SharedMemory) -> memoryview:
    view = block.buf
    assert view is not None  # None only once closed
    return view


def _new() -> shared_memory.SharedMemory:
    block = shared_memory.SharedMemory(create=True, size=BLOCK_BYTES)
    try:
        if hasattr(os, "posix_fallocate"):  # Linux; not macOS, whose blocks have no /dev/shm to fill
            os.posix_fallocate(block._fd, 0, BLOCK_BYTES)  # type: ignore[attr-defined]  # no other handle on it
    except OSError as exc:
        _release(block)
        raise SharedMemoryFull(
            f"/dev/shm has no room for a decode block of {BLOCK_BYTES / 2**20:.1f} MB ({exc.strerror}): a web"
            " process needs DECODE_PROCESSES of them. Give /dev/shm more room (docker run --shm-size, a"
            " memory-backed emptyDir at /dev/shm in Kubernetes) or lower DECODE_PROCESSES"
        ) from exc
    return block


def _release(block: shared_memory.SharedMemory) -> None:
    block.close()
    with contextlib.suppress(FileNotFoundError):
        block.unlink()


# In a decode process: the blocks it has written into, by name.
_attached: dict[str, shared_memory.SharedMemory] = {}


def _attach(name: str) -> shared_memory.SharedMemory:
    block = _attached.get(name)
    if block is None:
        if len(_attached) >= MAX_ATTACHED:  # most are retired blocks, gone from the web process
            for kept in _attached.values():
                kept.close()
            _attached.clear()
        block = _attached[name] = shared_memory.SharedMemory(name)
    return block


def read_upload(name: str, size: int) -> bytes:
    """In a decode process: the upload of `size` bytes the web process put into its block `name`."""
    return bytes(_view(_attach(name))[images.INPUT_BYTES : images.INPUT_BYTES + size])


def write_pixels(name: str, pixels: bytes) -> None:
    """In a decode process: `pixels` into the web process's block `name`."""
    _view(_attach(name))[: images.INPUT_BYTES] = pixels
