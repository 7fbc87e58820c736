"""Reading zip archives of images safely: limits on entries and expanded bytes, no unsafe names, no entry
read past the size its header states. No name in an archive is ever used as a path."""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import PurePosixPath

from litestar.exceptions import ClientException, HTTPException
from litestar.status_codes import HTTP_413_REQUEST_ENTITY_TOO_LARGE

# A zip entry that expands more than this many times over is treated as a bomb.
MAX_COMPRESSION_RATIO = 200
# Archive entries that are not images of the user's: macOS resource forks, hidden files.
SKIPPED_PREFIXES = ("__MACOSX/", ".")
# How a zip archive starts (a local file header, or the end record of an empty archive).
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


@dataclass(frozen=True)
class Upload:
    name: str
    data: bytes


class CollectionRejected(ClientException):
    """The whole request is refused (too many files, an unsafe or oversized archive)."""


def refuse(detail: str, status: int = 400) -> HTTPException:
    return CollectionRejected(detail=detail, status_code=status)


def skipped(name: str) -> bool:
    """Files that are not the user's images: resource forks and hidden files (.DS_Store), in archives and folders."""
    return name.startswith(SKIPPED_PREFIXES) or PurePosixPath(name).name.startswith(".")


def is_archive(upload: Upload) -> bool:
    """A zip archive, by its content or, failing that, by its name (so a broken one is reported as a zip)."""
    return upload.data.startswith(ZIP_MAGIC) or upload.name.lower().endswith(".zip")


def _unsafe(name: str) -> bool:
    path = PurePosixPath(name.replace("\\", "/"))
    return name.startswith(("/", "\\")) or ".." in path.parts or (len(name) > 1 and name[1] == ":")


def read_zip(data: bytes, max_files: int, max_bytes: int) -> list[Upload]:
    """The images in a zip archive, read within limits; no name in it is ever used as a path."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError) as exc:
        raise refuse(f"Not a readable zip archive: {exc}") from exc
    entries = [e for e in archive.infolist() if not e.is_dir()]
    if len(entries) > max_files:
        raise refuse(f"The archive has {len(entries)} files; at most {max_files} are accepted", 413)
    if unsafe := [e.filename for e in entries if _unsafe(e.filename)]:
        raise refuse(f"The archive has unsafe paths (absolute or with '..'): {unsafe[0]!r}")
    total = sum(e.file_size for e in entries)
    if total > max_bytes:
        raise refuse(f"The archive expands to {total} bytes; at most {max_bytes}", HTTP_413_REQUEST_ENTITY_TOO_LARGE)
    uploads = []
    for entry in entries:
        if skipped(entry.filename):
            continue
        if entry.file_size > MAX_COMPRESSION_RATIO * max(entry.compress_size, 1):
            raise refuse(f"{entry.filename!r} expands {entry.file_size // max(entry.compress_size, 1)}x: a zip bomb?")
        with archive.open(entry) as member:
            content = member.read(entry.file_size + 1)  # the header may lie: read no more than it says
        if len(content) > entry.file_size:
            raise refuse(f"{entry.filename!r} is larger than its header says")
        uploads.append(Upload(entry.filename, content))
    return uploads


def open_archives(uploads: list[Upload], max_files: int, max_bytes: int) -> list[Upload]:
    """Images as they came, hidden files left out, and each zip archive replaced by the images in it.

    The archives share one budget of expanded bytes, so several of them hold no more than one may."""
    found: list[Upload] = []
    for upload in uploads:
        if is_archive(upload):
            room = max(max_bytes - sum(len(u.data) for u in found), 0)
            found += read_zip(upload.data, max_files, room)
        elif not skipped(upload.name):
            found.append(upload)
    return found
