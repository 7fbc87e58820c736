"""Collections: many images classified together, sent as several files or one zip archive.

The request only checks the archive's directory against the limits and the user's quotas, stores it and
answers; the archive is read in the background (`read_archive`), each image checked exactly as a single
upload is and recorded as a Prediction of the collection that waits in the database until the feeder
(app/feeder.py) puts it on a stream. An entry that cannot be read, or is not an acceptable image, becomes
a failed item with its reason, and the rest go on. Images classified before cost no model work.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

from litestar.exceptions import HTTPException
from redis.asyncio.lock import Lock
from redis.exceptions import LockError, LockNotOwnedError
from tortoise.exceptions import IntegrityError
from tortoise.expressions import Q, RawSQL
from tortoise.functions import Count

from app import archives, files, keys, predictions, quotas, sandbox, schemas, text
from app.archives import Upload, refuse
from app.background import Every, renewing
from app.exports import CSV_PAGE, RESULT_CSV_COLUMNS, csv_text, result_cells
from app.models import Collection, CollectionStatus, Prediction, Status, User
from app.predictions import Accepted
from app.services import Services

log = logging.getLogger(__name__)
ARCHIVES_DIR = "archives"  # under UPLOAD_DIR: collections waiting to be read
MAX_NAME = 255  # Collection.name's column
PACKED_SUFFIX = ".files.zip"  # several uploads packed together (archives.pack), as opposed to a user's zip
# A reading lock lapses after this long unless renewed (its process stopped): another process resumes.
READING_LOCK_S = 30
NUDGE_EVERY = 20  # entries read between telling the feeder there is more to feed
# How long one person's collection start may hold the others (storing up to MAX_COLLECTION_BYTES), and
# how long another waits for it.
STARTING_LOCK_S = 60
# A CSV row's columns (app/exports.py result_cells); top5 as its JSON text (result_pages).
CSV_FIELDS = ("file_name", "image_sha256", "label", "wnid", "score", "status", "error", "top5_json", "model_weights")


async def create(services: Services, user: User, uploads: list[Upload], name: str = "") -> Collection:
    """Check, store and start a collection; its images are read in the background."""
    settings = services.settings
    # Shown in lists as a person's name is: no invisible characters either.
    if problem := text.text_problem(name, "The collection name") or text.invisible_problem(name, "The collection name"):
        raise refuse(problem)
    if len(name) > MAX_NAME:
        raise refuse(f"The collection name may have at most {MAX_NAME} characters; this one has {len(name)}")
    if not uploads:
        raise refuse("Send at least one image: several `files`, or one zip `archive`")
    uploads = archives.wanted(uploads)
    bounds = settings.max_collection_files, settings.max_collection_bytes
    total, expanded = await asyncio.to_thread(archives.count_images, uploads, *bounds)
    if total == 0:
        raise refuse("There is nothing to classify: the files chosen hold no images")
    # One start at a time per person, from the quota check to the collection's row: requests sent at once
    # all passed the check before any row was there to count.
    lock = services.redis.lock(keys.collection_start(user.id), STARTING_LOCK_S, blocking_timeout=STARTING_LOCK_S)
    if not await lock.acquire():
        raise quotas.too_many("Another collection of yours is being started; send this one once it is", 5, {})
    # Renewed while a large upload is stored: lapsed, it let the next start pass the quotas before this row was made.
    async with renewing(lock, "start-lock"):
        return await _start(services, user, uploads, name, (total, expanded))


async def _start(
    services: Services, user: User, uploads: list[Upload], name: str, contents: tuple[int, int]
) -> Collection:
    """Within the quotas: store the uploads and create the collection, to be read in the background.
    `contents`: its images, and their bytes once expanded, which it holds against the storage quota while it
    is read (its archive's bytes where they are more); the images are then stored as they are read."""
    total, expanded = contents
    reserved = max(sum(len(u.data) for u in uploads), expanded)
    async with quotas.collection_allowance(services, user, total, reserved):  # its row made, singles count it
        packed = not (len(uploads) == 1 and archives.is_archive(uploads[0]))
        collection_id = uuid4()
        relative = f"{ARCHIVES_DIR}/{collection_id}{PACKED_SUFFIX if packed else '.zip'}"
        stored = services.settings.upload_dir / relative
        data = functools.partial(archives.pack, uploads) if packed else uploads[0].data
        try:
            await asyncio.to_thread(files.write_atomic, stored, data)
        except OSError as exc:  # the disk's fault, as a single upload's original's (507 when full, else 503)
            raise sandbox.store_failed(sandbox.NotStored(exc.errno, str(exc))) from None
        try:
            size = stored.stat().st_size
            collection = await Collection.create(
                id=collection_id,
                user=user,
                name=name,
                total=total,
                status=CollectionStatus.READING,
                archive_path=relative,
                archive_bytes=reserved,
            )
        except BaseException:  # no row would ever point at the archive: nothing would remove it
            stored.unlink(missing_ok=True)
            raise
    services.disk.wrote(size)
    services.nudge_feeder()
    return collection


async def _add_failed(
    services: Services, collection: Collection, entry: int, name: str, data: bytes, error: str
) -> None:
    await Prediction.create(
        user_id=collection.user_id,  # type: ignore[attr-defined]
        collection=collection,
        entry=entry,
        model_name=services.settings.model_name,
        model_weights=services.settings.model_weights,
        file_name=text.clean_file_name(name),
        image_sha256=hashlib.sha256(data).hexdigest(),
        image_path="",
        status=Status.FAILED,
        error=error,
        finished_at=datetime.now(UTC),
    )


class ReadingPaused(Exception):
    """The server cannot take an image now (its store full or failing, its shared memory full): not the
    image's fault, so no item fails for it. The reading stops, its lock is left to lapse, and the next
    reader resumes it then."""


async def _checked(services: Services, user: User, data: bytes | archives.EntryUnreadable) -> Accepted | str:
    """An entry checked and stored as an upload is (predictions.accept), or why it was refused or unreadable."""
    if isinstance(data, archives.EntryUnreadable):
        return str(data)
    try:
        return await predictions.accept(services, user, data)
    except HTTPException as exc:
        if exc.status_code >= 500:  # made for good, a failed item would lose an image a retry can read
            raise ReadingPaused(str(exc.detail)) from exc
        return str(exc.detail)  # not an image, or too costly to decode


async def _add_item(
    services: Services, collection: Collection, user: User, entry: int, name: str, outcome: Accepted
) -> None:
    """One accepted image of the collection: done from the cache, or waiting for the feeder."""
    image, cached = outcome
    record = await predictions.record_of(services, user, image, name) | {"collection": collection, "entry": entry}
    if cached is not None:
        await predictions.create_cached(record, cached)
    else:
        item = await predictions.insert(record, status=Status.QUEUED)
        services.kept.keep(str(item.id), image.pixels)


def reading_lock_of(services: Services, collection_id: str) -> Lock:
    """Who reads a collection's archive: held by one web process, renewed as it reads. If that process
    stops, the lock lapses and another takes the reading over where it was left; a reader that finds it
    has lost the lock stops at once, so no entry is read twice."""
    return services.redis.lock(keys.reading_lock(collection_id), timeout=READING_LOCK_S, blocking=False)


class Holding:
    """A reading lock held as an archive is read: renewed in the background every third of its time (a
    slow step does not let it lapse), and known to be ours while its last renewal is younger than two
    thirds of its time. Each step's items are recorded only if it still is, so a step that outlived the
    lock (its process stalled) records nothing that the reader who took over will read again."""

    def __init__(self, lock: Lock) -> None:
        self.lock = lock
        self.renewed = time.monotonic()  # just taken
        self._renewing = Every(READING_LOCK_S / 3, self._renew, name="reading-lock", wait_first=True)

    async def _renew(self) -> None:
        sent = time.monotonic()
        await self.lock.reacquire()
        self.renewed = sent

    async def still_ours(self) -> bool:
        if time.monotonic() - self.renewed < READING_LOCK_S * 2 / 3:
            return True
        try:
            await self._renew()
        except LockNotOwnedError:  # it lapsed, and may be another reader's by now
            return False
        return True

    async def stop(self) -> None:
        await self._renewing.stop()


async def _read_entries(services: Services, collection: Collection, path: Path, holding: Holding) -> bool:
    """Read the entries not read yet into items; False if the reading was taken over meanwhile. As many
    entries are checked at once as there are decode processes (one at a time left them idle between
    entries: 3.9-4.3 ms of the web side's CPU per image read against 3.1-3.8, measured), and their items
    are recorded in the entries' order. Each step in its owner's turn among all the readings of the process
    (`services.reading`), its entries read only then: read first, each reading waiting for the decode
    processes held them, 64 MB for 8 collections of 4 MB entries."""
    reader = await _open(services, path)
    try:
        user = await User.get(id=collection.user_id)  # type: ignore[attr-defined]
        # One item per entry, in order: a reading taken over from a stopped process resumes after them.
        start = await Prediction.filter(collection=collection).count()
        ahead = services.settings.decode_processes
        for first in range(start, len(reader), ahead):
            indices = range(first, min(first + ahead, len(reader)))
            async with services.reading.slot(user.id):
                entries = [await _entry(reader, index) for index in indices]
                outcomes = await asyncio.gather(*(_checked(services, user, data) for _, data in entries))
                if not await holding.still_ours() or not await _record(
                    services, collection, user, indices, entries, outcomes
                ):
                    log.warning("reading of collection %s was taken over by another process", collection.id)
                    return False
            if any(index % NUDGE_EVERY == 0 for index in indices):
                services.nudge_feeder()  # the first items need not wait for the whole archive
    finally:
        reader.close()
    return True


async def _open(services: Services, path: Path) -> archives.Reader:
    """The stored archive's reader. Gone, it is refused for good (as a damaged one); it cannot be opened
    just now (too many files open), the reading pauses: ended, it lost every image not read yet."""
    packed = path.name.endswith(PACKED_SUFFIX)
    try:
        return await asyncio.to_thread(archives.Reader, path, packed, services.settings.max_upload_bytes)
    except FileNotFoundError as exc:
        raise refuse(f"it is gone ({exc.strerror})") from exc
    except OSError as exc:
        raise ReadingPaused(f"The archive cannot be opened just now ({exc.strerror or exc})") from exc


async def _record(
    services: Services,
    collection: Collection,
    user: User,
    indices: range,
    entries: list[tuple[str, bytes | archives.EntryUnreadable]],
    outcomes: list[Accepted | str],
) -> bool:
    """Record a step's items in order; False at an entry another reader recorded first (its lock was lost,
    with a restarted Redis, while this reader's last renewal was recent)."""
    try:
        for index, (name, data), outcome in zip(indices, entries, outcomes, strict=True):
            if isinstance(outcome, str):
                await _add_failed(services, collection, index, name, data if isinstance(data, bytes) else b"", outcome)
            else:
                await _add_item(services, collection, user, index, name, outcome)
    except IntegrityError:
        return False
    return True


async def _entry(reader: archives.Reader, index: int) -> tuple[str, bytes | archives.EntryUnreadable]:
    """An entry's name and bytes, or why it cannot be read."""
    name = reader.name(index)
    try:
        return name, await asyncio.to_thread(reader.read, index)
    except archives.EntryUnreadable as exc:
        return name, exc


async def read_archive(services: Services, collection: Collection, lock: Lock) -> None:
    """Read a stored collection's images into items, holding its reading lock (in the background: see
    app/feeder.py), renewed while it waits for its place among the readings open (`open_readings`)."""
    path = services.settings.upload_dir / collection.archive_path
    error, holding = None, Holding(lock)
    try:
        if collection.error:  # a pause's, said while it lasted
            await Collection.filter(id=collection.id).update(error=None)
        async with services.open_readings.slot(collection.user_id):  # type: ignore[attr-defined]
            if not await _read_entries(services, collection, path, holding):
                return
    except ReadingPaused as exc:
        log.warning("reading of collection %s paused (%s): it resumes once its lock lapses", collection.id, exc)
        if await holding.still_ours():  # else the reader who took over says how it goes
            paused = f"Reading paused: {str(exc).rstrip('.')}. It resumes by itself."
            await Collection.filter(id=collection.id, status=CollectionStatus.READING).update(error=paused)
        return
    except archives.CollectionRejected as exc:  # the stored archive is gone or damaged since
        log.warning("could not read collection %s", collection.id, exc_info=True)
        error = f"The archive could not be read to the end: {exc}"
    finally:
        await holding.stop()
    if not await holding.still_ours():  # taken over as it ended: the reader who took it over ends it
        return
    await Collection.filter(id=collection.id).update(status=CollectionStatus.CLASSIFYING, archive_path="", error=error)
    path.unlink(missing_ok=True)
    with contextlib.suppress(LockError):  # lapsed meanwhile: another's by now, or nobody's
        await lock.release()
    services.nudge_feeder()


async def progress_of(collections: list[Collection]) -> dict[str, dict[str, int]]:
    """Progress of several collections by id: of those done, as counted then; the others' in one grouped query."""
    found = {str(c.id): {"total": c.total, **{str(status): 0 for status in Status}} for c in collections}
    counting = [c.id for c in collections if c.done_count is None or c.failed_count is None]
    for c in (c for c in collections if c.id not in counting):
        found[str(c.id)].update({Status.DONE.value: c.done_count or 0, Status.FAILED.value: c.failed_count or 0})
    grouped = Prediction.filter(collection_id__in=counting).group_by("collection_id", "status").annotate(n=Count("id"))
    for row in await grouped.values("collection_id", "status", "n") if counting else []:
        found[str(row["collection_id"])][str(row["status"])] = row["n"]
    return found


async def progress(collection: Collection) -> dict[str, int]:
    return (await progress_of([collection]))[str(collection.id)]


async def visible_collection(user: User, collection_id: Any) -> Collection:
    return await predictions.visible(Collection, user, collection_id, "collection")


def items(collection: Collection, status: str | None = None, label: str | None = None) -> Any:
    query = Prediction.filter(collection=collection)
    if status:
        query = query.filter(status=status)
    if label:
        query = query.filter(label__iexact=label)  # typed by people as often as chosen from a list
    return query.order_by("file_name", "created_at")


async def results_csv(services: Services, user: User, collection_id: Any) -> tuple[str, AsyncIterator[str]]:
    """(file name, CSV text as it is made, in the user's turns) of a collection its owner (or an admin) may see."""
    collection = await visible_collection(user, collection_id)
    pages = result_pages(collection)
    return f"collection-{collection.id}.csv", csv_text(RESULT_CSV_COLUMNS, pages, services.exports, user.id)


async def result_pages(collection: Collection) -> AsyncIterator[list[list[str]]]:
    """Its items' rows in the pages' order, CSV_PAGE at a time: keyset pages, each an index's range (migration 0019).
    Read as tuples, top5 as its JSON text: model objects cost the web process 1.1 s of CPU per 20,000 rows (0.4)."""
    after, query = Q(), items(collection).annotate(top5_json=RawSQL('"top5"')).order_by("file_name", "created_at", "id")
    while page := await query.filter(after).limit(CSV_PAGE).values_list(*CSV_FIELDS, "created_at", "id"):
        yield [result_cells(r[:7], schemas.stored_top5(r[7]), schemas.weights_trained(r[8])) for r in page]
        name, created_at, last_id = page[-1][0], page[-1][-2], page[-1][-1]
        after = Q(file_name__gte=name) & (  # the >= bounds the index's range; the rest steps past ties
            Q(file_name__gt=name)
            | Q(file_name=name, created_at__gt=created_at)
            | Q(file_name=name, created_at=created_at, id__gt=last_id)
        )
