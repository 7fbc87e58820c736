"""Files kept on disk: originals stored once by content hash, and the one atomic write every file uses."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temp file beside `path`, then rename: a concurrent reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".partial-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def store_original(data: bytes, relative_path: str, upload_dir: Path) -> Path:
    """Keep an original once, under its hash-derived `relative_path` (blocking: call it in a thread)."""
    path = upload_dir / relative_path
    if not path.exists():
        write_atomic(path, data)
    return path
