"""Per-user quotas and the disk bound: how many images one person may have waiting, collections in
progress, images sent in a day and bytes of originals stored; how full UPLOAD_DIR may get, and, once it is
crowded, how much of it one person may hold.

Each check is one query on an index (predictions by user and time, by status; collections by status),
or none (the disk: a figure kept in memory). A person's single uploads are checked one at a time per web
process, each counting those let through before it whose rows are not made yet (`upload_allowance`): N
processes pass a quota by what the N - 1 others let through meanwhile at most. Collections are started one
at a time per person (app/collections.py), each checked against the ones before it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, cast

from litestar.exceptions import ClientException, HTTPException, TooManyRequestsException
from litestar.status_codes import HTTP_413_REQUEST_ENTITY_TOO_LARGE, HTTP_507_INSUFFICIENT_STORAGE

from app import usage
from app.models import Collection, CollectionStatus, Prediction, User
from app.services import Services
from app.settings import Settings
from app.stages import stage

QUEUED_RETRY_SECONDS = 30
COLLECTIONS_RETRY_SECONDS = 60
IN_PROGRESS = (CollectionStatus.READING, CollectionStatus.CLASSIFYING)
# The part of the high-water mark past which the store is crowded: new originals are then stored only up
# to an equal share of it per person, else a few accounts filled it and everyone got 507.
CROWDED = 0.8


class StorageFull(HTTPException):
    """UPLOAD_DIR is past its high-water mark (no new original is stored until space is freed), or
    crowded and what comes in would take the person past an equal share of it."""

    status_code = HTTP_507_INSUFFICIENT_STORAGE


def size_text(size: int) -> str:
    """`812 bytes`, `3.4 MiB`, `2.0 GiB`."""
    if size < 1024:
        return f"{size} bytes"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024:
            return f"{value:.1f} {unit}"
    return f"{value / 1024:.1f} TiB"


def _numbers(quota: str, used: int, limit: int) -> dict[str, Any]:
    """What the API's error body carries beside the sentence (`extra`), for programs."""
    return {"quota": quota, "used": used, "limit": limit}


def too_many(detail: str, retry_after: int, numbers: dict[str, Any]) -> TooManyRequestsException:
    return TooManyRequestsException(detail=detail, headers={"Retry-After": str(retry_after)}, extra=numbers)


# ---- the disk -----------------------------------------------------------------------------------------


def high_water_mark(settings: Settings) -> int:
    """The bytes under UPLOAD_DIR past which uploads are refused."""
    return int(settings.max_stored_bytes * settings.stored_high_water)


def check_disk(services: Services, incoming_bytes: int) -> None:
    """507 once UPLOAD_DIR is past its high-water mark: an administrator must free space."""
    settings, used = services.settings, services.disk.used
    if used + incoming_bytes > high_water_mark(settings):
        raise StorageFull(
            detail=f"The image store is full ({size_text(used)} used of {size_text(settings.max_stored_bytes)};"
            f" uploads stop at {settings.stored_high_water:.0%}): nothing new can be stored until an"
            " administrator frees space. Try again later",
            extra=_numbers("disk", used, high_water_mark(settings)),
        )


async def over_share(services: Services, stored: int, incoming_bytes: int) -> int | None:
    """The equal share of the store that `incoming_bytes` new to it would take someone storing `stored`
    bytes past, when it is crowded; else None. What comes in counts, as for the storage quota: judged on
    `stored` alone, someone a byte under it started a collection of MAX_COLLECTION_BYTES. Shared among the
    people who store originals, counting this person once if they store nothing yet; the count is asked
    only when crowded, and kept a while."""
    settings = services.settings
    if not incoming_bytes or services.disk.used + incoming_bytes <= CROWDED * high_water_mark(settings):
        return None
    share = high_water_mark(settings) // max(1, await services.storers.count() + (stored == 0))
    return share if stored + incoming_bytes > share else None


async def check_share(services: Services, stored: int, incoming_bytes: int) -> None:
    """507 when the store is crowded and `incoming_bytes` more would take this person, storing `stored`
    bytes, past their share of it."""
    share = await over_share(services, stored, incoming_bytes)
    if share is not None:
        raise StorageFull(
            detail=f"The image store is nearly full ({size_text(services.disk.used)} used), and you store"
            f" {size_text(stored)} of originals: {size_text(incoming_bytes)} more would take you past an equal"
            f" share of it ({size_text(share)}). Until space is freed, each person stores new images up to"
            " that share. Old ones are removed by the retention policy, or ask an administrator",
            extra=_numbers("disk_share", stored, share),
        )


# ---- one person's quotas ------------------------------------------------------------------------------


async def check_stored(services: Services, user: User, incoming_bytes: int) -> int:
    """413 when `incoming_bytes` more would take `user` past their storage quota; else the bytes they store."""
    limit = services.settings.quota_stored_bytes
    # Those on their way first: one arriving during the reading is then counted twice, not missed.
    going = services.usage.going(user.id).stored
    used = going + await usage.stored_bytes(user.id)
    if used + incoming_bytes > limit:
        raise ClientException(
            status_code=HTTP_413_REQUEST_ENTITY_TOO_LARGE,
            detail=f"You store {size_text(used)} of originals of the {size_text(limit)} one account may keep,"
            f" so {size_text(incoming_bytes)} more do not fit; old ones are removed by the retention policy,"
            " or ask an administrator",
            extra=_numbers("stored_bytes", used, limit),
        )
    return used


async def check_storage(services: Services, user: User, incoming_bytes: int) -> None:
    """Before storing anything: the disk (507), the person's quota (413), then, when the disk is crowded,
    their share of it (507)."""
    check_disk(services, incoming_bytes)
    await check_share(services, await check_stored(services, user, incoming_bytes), incoming_bytes)


async def _seconds_until_room(user: User, now: datetime, excess: int) -> int:
    """When the `excess` oldest images of the last 24 hours have left that window."""
    oldest = (
        await Prediction.filter(user_id=user.id, created_at__gte=now - usage.DAY)
        .order_by("created_at")
        .offset(excess - 1)
        .limit(1)
        .values_list("created_at", flat=True)
    )
    if not oldest:  # among the images of a collection not read yet: they enter the window as they are read
        return math.ceil(usage.DAY.total_seconds())
    leaves = cast(datetime, oldest[0]) + usage.DAY
    return max(1, math.ceil((leaves - now).total_seconds()))


async def check_images(services: Services, user: User, images: int) -> None:
    """429 when `images` more would take `user` past their images in 24 hours, with when they fit."""
    limit = services.settings.quota_images_per_day
    if images > limit:
        raise ClientException(
            status_code=HTTP_413_REQUEST_ENTITY_TOO_LARGE,
            detail=f"{images} images are more than one account may send in a day ({limit})",
            extra=_numbers("images_per_day", images, limit),
        )
    now = datetime.now(UTC)
    sent = services.usage.going(user.id).sent + await usage.sent_today(user.id, now)
    if sent + images > limit:
        more = f"; {images} more do not fit" if images > 1 else ""
        raise too_many(
            f"You have sent {sent} images in the last 24 hours, and {limit} a day is the most one account may"
            f" send{more}. Try again later",
            await _seconds_until_room(user, now, sent + images - limit),
            _numbers("images_per_day", sent, limit),
        )


async def check_queued(services: Services, user: User) -> None:
    """429 when `user` already has the most single uploads and async jobs waiting for the model."""
    limit = services.settings.quota_queued
    waiting = services.usage.going(user.id).queued + await usage.queued(user.id)
    if waiting >= limit:
        raise too_many(
            f"You have {waiting} images waiting to be classified, the most one account may have ({limit});"
            " send more once some are done",
            QUEUED_RETRY_SECONDS,
            _numbers("queued", waiting, limit),
        )


async def check_collections(services: Services, user: User) -> None:
    """429 when `user` already has the most collections being read or classified."""
    limit = services.settings.quota_collections
    running = await Collection.filter(user_id=user.id, status__in=IN_PROGRESS).count()
    if running >= limit:
        raise too_many(
            f"You have {running} collections in progress, the most one account may have ({limit});"
            " start another once one is done",
            COLLECTIONS_RETRY_SECONDS,
            _numbers("collections", running, limit),
        )


async def check_collection(services: Services, user: User, images: int, incoming_bytes: int) -> None:
    """Before a collection of `images` images (`incoming_bytes` in all) is started: collections in
    progress, images of the day (all of them, up front) and storage."""
    await check_collections(services, user)
    await check_images(services, user, images)
    await check_storage(services, user, incoming_bytes)


@contextlib.asynccontextmanager
async def _allowance(
    services: Services, user: User, check: Callable[[], Awaitable[usage.Usage]]
) -> AsyncIterator[None]:
    """`check` (returning what it lets through), one of the person's at a time in this process, what it let
    through then counted as on its way until the block ends (rows made, or refused): the checks after it count
    it, rows made or not (20 uploads sent at once against a quota of 3 had all read the same figures)."""
    async with services.usage.checking(user.id):
        with stage("database"):
            going = await check()
        services.usage.counted(user.id, going)
    try:
        yield
    finally:
        services.usage.arrived(user.id, going)


def upload_allowance(services: Services, user: User, data: bytes) -> contextlib.AbstractAsyncContextManager[None]:
    """`check_upload`, and the upload on its way until its row is made."""
    return _allowance(services, user, functools.partial(check_upload, services, user, data))


def collection_allowance(
    services: Services, user: User, images: int, incoming_bytes: int
) -> contextlib.AbstractAsyncContextManager[None]:
    """`check_collection`, and its images on their way until its row is made: single uploads checked meanwhile
    count them (they cannot see the collection before)."""

    async def check() -> usage.Usage:
        await check_collection(services, user, images, incoming_bytes)
        return usage.Usage(0, images, incoming_bytes)

    return _allowance(services, user, check)


async def check_upload(services: Services, user: User, data: bytes) -> usage.Usage:
    """Before one upload is decoded or stored: images waiting (429), images of the day (429), the disk
    (507), bytes stored (413) and, when the disk is crowded, the person's share of it (507). Judged on the
    figures this process keeps (app/usage.py): when they say no, the checks above read them fresh and give
    the refusal, with the numbers. An original the person keeps already is charged nothing there (hashed
    only then: most uploads fit at once). Returns what it lets through: one waiting, one image, its bytes."""
    settings, incoming_bytes = services.settings, len(data)
    kept = await services.usage.get(user.id)
    fits = (
        kept.queued < settings.quota_queued
        and kept.sent + 1 <= settings.quota_images_per_day
        and kept.stored + incoming_bytes <= settings.quota_stored_bytes
        and await over_share(services, kept.stored, incoming_bytes) is None
    )
    if not fits:
        services.usage.forget(user.id)
        await check_queued(services, user)
        await check_images(services, user, 1)
    check_disk(services, incoming_bytes)
    if not fits:
        incoming_bytes = await usage.charged_bytes(user.id, hashlib.sha256(data).hexdigest(), incoming_bytes)
        await check_storage(services, user, incoming_bytes)
    return usage.Usage(1, 1, incoming_bytes)
