"""Files kept on disk: originals stored once by content hash, the one atomic write every file uses, the
running measure of how much `UPLOAD_DIR` holds, and the removal of originals by a retention run."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from app.background import Every

# How often a web process walks UPLOAD_DIR again; between walks it adds what it writes itself.
SCAN_SECONDS = 300.0
# A write in progress; one older than this was cut off (its decode process was stopped mid-write) and is
# removed by the next walk.
PARTIAL_PREFIX = ".partial-"
STALE_PARTIAL_S = 3600.0
# An original found missing, then there, then gone again (other uploads of it refused) is tried again so often.
STORE_TRIES = 3


def write_atomic(
    path: Path, data: bytes | Callable[[IO[bytes]], object], modified_ns: int | None = None, new: bool = False
) -> bool:
    """Write `data` (bytes, or what a function writes to the file) to a temp file beside `path`, then
    rename: a concurrent reader never sees half a file. With `modified_ns`, the file has that modification
    time as it appears. `new`: FileExistsError, and `path` left as it is, if it exists by then (linked, not
    renamed over it); False if that could not be made sure (no hard links: renamed, over any written meanwhile)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=PARTIAL_PREFIX)
    try:
        with os.fdopen(fd, "wb") as out:
            if isinstance(data, bytes):
                out.write(data)
            else:
                data(out)
        if modified_ns is not None:
            os.utime(tmp, ns=(modified_ns, modified_ns))
        if new and _linked(tmp, path):
            return True
        os.replace(tmp, path)
        return not new
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _linked(tmp: str, path: Path) -> bool:
    """`tmp` is now `path` too, unless that exists already (FileExistsError); False on a file system without
    hard links, where only a rename (over it) is left."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP):
            raise
        return False
    os.unlink(tmp)
    return True


class DiskUsage:
    """The bytes under UPLOAD_DIR as this process knows them: its last walk of the directory plus what it
    has written since. Thread-safe: the walk runs in a thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._measured: int | None = None
        self._written = 0

    @property
    def measured(self) -> bool:
        return self._measured is not None

    @property
    def used(self) -> int:
        with self._lock:
            return (self._measured or 0) + self._written

    def wrote(self, size: int) -> None:
        with self._lock:
            self._written += size

    async def measure(self, upload_dir: Path) -> int:
        """Walk the directory (in a thread); the total from now on is that plus what is written after."""
        with self._lock:
            before = self._written
        total = await asyncio.to_thread(directory_bytes, upload_dir)
        with self._lock:
            # A file written during the walk may be counted twice until the next one: an overestimate.
            self._measured, self._written = total, self._written - before
        return self.used


def directory_bytes(root: Path) -> int:
    """The size of every file under `root` (blocking); 0 if it does not exist yet. Removes the writes that
    were cut off (PARTIAL_PREFIX, older than STALE_PARTIAL_S) instead of counting them."""
    total, pending = 0, [root]
    stale_before = time.time() - STALE_PARTIAL_S
    while pending:
        with contextlib.suppress(OSError), os.scandir(pending.pop()) as entries:  # gone while walking
            for entry in entries:
                with contextlib.suppress(OSError):
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(Path(entry.path))
                        continue
                    stat = entry.stat(follow_symlinks=False)
                    if entry.name.startswith(PARTIAL_PREFIX) and stat.st_mtime < stale_before:
                        os.unlink(entry.path)
                    else:
                        total += stat.st_size
    return total


def measure_forever(usage: DiskUsage, upload_dir: Path, seconds: float = SCAN_SECONDS) -> Every:
    """Measure UPLOAD_DIR now (at start-up) and every `seconds` after."""
    return Every(seconds, lambda: usage.measure(upload_dir), name="disk-usage")


def store_original(data: bytes, relative_path: str, upload_dir: Path) -> int | None:
    """Keep an original once, under its hash-derived `relative_path` (blocking: call it in a thread or a
    decode process). Storing it again marks it as just used (its modification time), which a retention
    run respects. When it was written (it was not there), that time in nanoseconds, for `forget_original`;
    else None. Both times are the clock's to the nanosecond, not the file system's coarser one: a use just
    after the write must not look like the write. Written only if still not there (linked, not renamed over):
    two uploads at once both found it missing, both wrote it (156 pairs of 200), and each took it for its own,
    so a refused one removed the original the other's row names."""
    path = upload_dir / relative_path
    for _ in range(STORE_TRIES):
        now = time.time_ns()
        with contextlib.suppress(FileNotFoundError):  # not there, or removed just after another wrote it
            os.utime(path, ns=(now, now))
            return None
        with contextlib.suppress(FileExistsError):  # another upload wrote it meanwhile: this one uses it
            # Renamed into place (no hard links), another's write at once may be under it: not claimed as its own.
            return now if write_atomic(path, data, modified_ns=now, new=True) else None
    raise FileExistsError(errno.EEXIST, "stored and removed again by other uploads meanwhile", str(path))


def forget_original(path: Path, written_ns: int) -> int:
    """Remove an original that the upload which wrote it (at `written_ns`, from `store_original`) was refused
    after all: no row will name it, so no retention run would ever remove it. Kept if stored again since (its
    time changed): another upload of the same image names it. The bytes freed. Blocking."""
    return _remove_unless(path, lambda stat: stat.st_mtime_ns != written_ns) or 0


def remove_file(path: Path, used_since: float | None = None, dry_run: bool = False) -> int | None:
    """Delete `path`: the bytes freed (or that would be, in a dry run; 0 if it is not there), or None if it
    was stored again at or after `used_since` (a timestamp) and is kept. Blocking: call it in a thread."""

    def used(stat: os.stat_result) -> bool:
        return used_since is not None and stat.st_mtime >= used_since

    if not dry_run:
        return _remove_unless(path, used)
    try:
        stat = path.stat()
    except FileNotFoundError:
        return 0
    return None if used(stat) else stat.st_size


def _remove_unless(path: Path, kept: Callable[[os.stat_result], bool]) -> int | None:
    """Delete `path` unless `kept` by its state then: the bytes freed, None if kept, 0 if not there. Renamed
    aside before it is looked at, so that an upload storing it again is never lost in between: looked at,
    then deleted, a use just between (store_original's touch) was deleted with it, and that upload's row named
    a file gone. A use before the rename is seen; one after finds it missing and writes it again. Kept, it is put
    back over any written meanwhile (the same bytes): that one's writer took it for its own (store_original), and,
    refused, would remove it from under the use this one is kept for."""
    aside = path.with_name(f"{PARTIAL_PREFIX}{path.name}-{os.getpid()}-{threading.get_ident()}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return 0
    try:
        stat = os.stat(aside)
        if not kept(stat):
            return stat.st_size
        os.replace(aside, path)
        return None
    finally:
        aside.unlink(missing_ok=True)
