"""Collections: many images classified together, read from several files or one zip archive.

Each image is checked exactly as a single upload is and becomes a Prediction of the collection; a bad
one is recorded as failed with its reason and the rest go on. Duplicates, and images classified
before, cost no model work.
"""

from __future__ import annotations

import csv
import hashlib
import io
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any

from litestar.exceptions import ClientException, HTTPException
from litestar.status_codes import HTTP_413_REQUEST_ENTITY_TOO_LARGE
from tortoise.functions import Count

from app import images, predictions, queue
from app.models import Collection, Prediction, Status, User
from app.services import Services

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


def _refuse(detail: str, status: int = 400) -> HTTPException:
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
        raise _refuse(f"Not a readable zip archive: {exc}") from exc
    entries = [e for e in archive.infolist() if not e.is_dir()]
    if len(entries) > max_files:
        raise _refuse(f"The archive has {len(entries)} files; at most {max_files} are accepted", 413)
    if unsafe := [e.filename for e in entries if _unsafe(e.filename)]:
        raise _refuse(f"The archive has unsafe paths (absolute or with '..'): {unsafe[0]!r}")
    total = sum(e.file_size for e in entries)
    if total > max_bytes:
        raise _refuse(f"The archive expands to {total} bytes; at most {max_bytes}", HTTP_413_REQUEST_ENTITY_TOO_LARGE)
    uploads = []
    for entry in entries:
        if skipped(entry.filename):
            continue
        if entry.file_size > MAX_COMPRESSION_RATIO * max(entry.compress_size, 1):
            raise _refuse(f"{entry.filename!r} expands {entry.file_size // max(entry.compress_size, 1)}x: a zip bomb?")
        with archive.open(entry) as member:
            content = member.read(entry.file_size + 1)  # the header may lie: read no more than it says
        if len(content) > entry.file_size:
            raise _refuse(f"{entry.filename!r} is larger than its header says")
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


async def _create_items(
    services: Services, collection: Collection, user: User, uploads: list[Upload]
) -> list[queue.Job]:
    """One Prediction per upload; the jobs to enqueue, one per distinct image needing the model."""
    settings = services.settings
    first: dict[str, tuple[Prediction, images.CheckedImage]] = {}
    followers: dict[str, list[str]] = {}
    for upload in uploads:
        try:
            image, cached = await predictions.accept(services, upload.data)
        except images.ImageRejected as exc:
            await Prediction.create(
                user=user,
                collection=collection,
                model_name=settings.model_name,
                model_weights=settings.model_weights,
                file_name=upload.name[:255],
                image_sha256=hashlib.sha256(upload.data).hexdigest(),
                image_path="",
                status=Status.FAILED,
                error=exc.detail,
                finished_at=datetime.now(UTC),
            )
            continue
        record = predictions.record_of(services, user, image, upload.name) | {"collection": collection}
        if cached is not None:
            await predictions.create_cached(record, cached)
        elif image.sha256 in first:
            follower = await Prediction.create(**record, status=Status.QUEUED)
            followers.setdefault(image.sha256, []).append(str(follower.id))
        else:
            first[image.sha256] = (await Prediction.create(**record, status=Status.QUEUED), image)
    return [
        queue.Job(str(p.id), sha, settings.model_id, image.pixels, also=tuple(followers.get(sha, ())))
        for sha, (p, image) in first.items()
    ]


async def create(services: Services, user: User, uploads: list[Upload], name: str = "") -> Collection:
    if not uploads:
        raise _refuse("Send at least one image: several `files`, or one zip `archive`")
    if len(uploads) > services.settings.max_collection_files:
        raise _refuse(f"At most {services.settings.max_collection_files} images in one collection", 413)
    collection = await Collection.create(user=user, name=name[:255], total=len(uploads))
    jobs = await _create_items(services, collection, user, uploads)
    await queue.enqueue_bulk(services.redis, user.id, jobs)
    return collection


async def progress_of(collections: list[Collection]) -> dict[str, dict[str, int]]:
    """Progress of several collections in one grouped query, by collection id."""
    found = {str(c.id): {"total": c.total, **{str(status): 0 for status in Status}} for c in collections}
    rows = await (
        Prediction.filter(collection_id__in=[c.id for c in collections])
        .group_by("collection_id", "status")
        .annotate(n=Count("id"))
        .values("collection_id", "status", "n")
    )
    for row in rows:
        found[str(row["collection_id"])][str(row["status"])] = row["n"]
    return found


async def progress(collection: Collection) -> dict[str, int]:
    return (await progress_of([collection]))[str(collection.id)]


async def get_visible(user: User, collection_id: Any) -> Collection:
    return await predictions.visible(Collection, user, collection_id, "collection")


def items(collection: Collection, status: str | None = None, label: str | None = None) -> Any:
    query = Prediction.filter(collection=collection)
    if status:
        query = query.filter(status=status)
    if label:
        query = query.filter(label__iexact=label)  # typed by people as often as chosen from a list
    return query.order_by("file_name", "created_at")


CSV_COLUMNS = ["file_name", "sha256", "label", "wnid", "score", "top5", "status", "error"]


def spreadsheet_safe(text: str) -> str:
    """Text that a spreadsheet would run as a formula gets a leading apostrophe."""
    return f"'{text}" if text.startswith(("=", "+", "-", "@", "\t", "\r")) else text


def to_csv(results: Iterable[dict[str, Any]]) -> str:
    """One row per image, from results shaped as `predictions.to_dict` makes them (the API's own)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for r in results:
        top5 = ";".join(f"{t['label']}:{t['score']}" for t in r.get("top5") or [])
        name = spreadsheet_safe(r["file_name"])  # the client chose it: it may be a formula
        row = [name, r["image_sha256"], r["label"], r["wnid"], r["score"], top5, r["status"], r["error"]]
        writer.writerow(["" if value is None else str(value) for value in row])
    return out.getvalue()


def describe(collection: Collection, counts: dict[str, int]) -> dict[str, Any]:
    return {
        "id": str(collection.id),
        "name": collection.name,
        "created_at": collection.created_at.isoformat(),
        "progress": counts,
    }


async def to_dict(collection: Collection) -> dict[str, Any]:
    return describe(collection, await progress(collection))
