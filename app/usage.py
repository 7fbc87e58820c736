"""What each person has used, for the quotas of single uploads (app/quotas.py): read from the database at
most every USAGE_TTL seconds per person and web process, and counted on in between as uploads go ahead, so
that a busy uploader's quotas cost no query per image.

The figures are only ever trusted to let an upload through: before refusing one, quotas reads them fresh.
Both count the uploads this process let through whose rows are not made yet (`UsageCache.going`), so a burst
keeps to a quota; uploads through another web process can overshoot it by what that one lets through meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from tortoise import connections
from tortoise.exceptions import IntegrityError
from tortoise.functions import Sum
from tortoise.transactions import in_transaction

from app.models import Collection, CollectionStatus, Prediction, Status, placeholders

USAGE_TTL = 2.0
MAX_PEOPLE = 10_000  # past it, the figures kept are dropped: a flood of accounts costs queries, not memory
# How long a web process keeps the count of the people storing originals: asked only while the store is
# crowded (app/quotas.py), and a count a minute old is near enough to share the store by.
STORERS_TTL = 60.0
DAY = timedelta(hours=24)


@dataclass
class Usage:
    queued: int  # single uploads and async jobs waiting for the model
    sent: int  # images in the last 24 hours (sent_today)
    stored: int  # bytes of originals kept
    read_at: float = 0.0


async def stored_bytes(user_id: int) -> int:
    """The bytes of the originals kept for a person's predictions (a pruned one keeps none), and what their
    collections being read will store: each holds its images' bytes from the start (`archive_bytes`), less
    those of its images read so far, which count as originals."""
    reading = await Collection.filter(user_id=user_id).exclude(archive_path="").values_list("id", "archive_bytes")
    # The originals last: an image read in between is then counted twice, not missed.
    originals = Prediction.filter(user_id=user_id).exclude(image_path="")
    if not reading:
        return await _sum(originals, "image_bytes")
    read = await (
        Prediction.filter(collection_id__in=[c for c, _ in reading])
        .exclude(image_path="")
        .group_by("collection_id")
        .annotate(total=Sum("image_bytes"))
        .values_list("collection_id", "total")
    )
    done = {str(c): int(total or 0) for c, total in read}
    return await _sum(originals, "image_bytes") + sum(max(held - done.get(str(c), 0), 0) for c, held in reading)


def kept_original_sql(dialect: str) -> str:
    """The lookup of `keeps_original`, its values in the order (sha256, user). `+user_id` as in
    predictions.earlier_result_sql: by the image's rows, not all of the person's."""
    sha_mark, user_mark = placeholders(dialect, 2)
    return (
        f"SELECT 1 FROM {Prediction._meta.db_table} WHERE image_sha256 = {sha_mark} AND +user_id = {user_mark}"
        " AND image_path <> '' LIMIT 1"
    )


async def keeps_original(user_id: int, sha256: str) -> bool:
    """Whether a prediction of this person still keeps this original (one not pruned)."""
    connection = connections.get("default")
    return bool(
        await connection.execute_query_dict(kept_original_sql(connection.capabilities.dialect), [sha256, user_id])
    )


async def charged_bytes(user_id: int, sha256: str, size: int, new: bool = False) -> int:
    """The bytes an upload of this original adds to what its person stores: none when they keep it already,
    as it is stored once by its hash. `new`: this upload stored it, so nobody kept it (no query)."""
    if new or not await keeps_original(user_id, sha256):
        return size
    return 0


def charged_sql(dialect: str) -> str:
    """The lookup of `charged_if_none`, its values in the order (user, sha256): by the index
    predictions_charged_once, which holds just these rows. On PostgreSQL the row found is locked until the
    upload's transaction ends (see `charged_if_none`); SQLite's transaction holds its write lock already."""
    user_mark, sha_mark = placeholders(dialect, 2)
    lock = "" if dialect == "sqlite" else " FOR SHARE"
    return (
        f"SELECT 1 FROM {Prediction._meta.db_table} WHERE user_id = {user_mark} AND image_sha256 = {sha_mark}"
        f" AND image_bytes > 0 AND image_path <> '' LIMIT 1{lock}"
    )


async def charged_if_none(prediction: Prediction, size: int) -> Prediction:
    """A prediction just made, in the transaction that made it (predictions.insert), charged `size` after all if it
    was made charged 0 (its person kept the original, or another upload of it was charged at once: a query on that
    path only) and none of theirs naming the original is charged it any more. A retention run clears the charged
    one's image_path, then passes the charge to a newer one naming it (app.admin._let_go): a row made after that
    search was missed, and kept it for free. This row is made, then looks, and is seen by others once its
    transaction ends; the run clears, then searches. A look that found one charged came before its clearing, and
    holds it (SQLite: the transaction's write lock; PostgreSQL: FOR SHARE, its row) until the row is seen: the
    clearing waits, so the search finds the row. A look that found none followed the clearing: the row charges
    itself. Both charging it: the index predictions_charged_once refuses the second."""
    if prediction.image_bytes:
        return prediction
    connection = connections.get("default")
    user_id: int = prediction.user_id  # type: ignore[attr-defined]
    sql = charged_sql(connection.capabilities.dialect)
    if await connection.execute_query_dict(sql, [user_id, prediction.image_sha256]):
        return prediction
    with contextlib.suppress(IntegrityError):  # charged meanwhile: the run's heir, or an upload of it at once
        async with in_transaction():  # a savepoint: on PostgreSQL a refused statement ends the transaction else
            await Prediction.filter(id=prediction.id).update(image_bytes=size)
        prediction.image_bytes = size
    return prediction


async def pass_charge(user_id: int, sha256: str, size: int, besides: list[Any]) -> None:
    """A person's original, charged to a prediction of theirs that let it go (pruned, or deleted), charged to
    their newest other one still keeping it (charged 0: usage.charged_bytes), if any, but those `besides`. One
    made after this search charges itself (`charged_if_none`); one charged meanwhile keeps its charge."""
    heir = await (
        Prediction.filter(user_id=user_id, image_sha256=sha256, image_bytes=0)
        .exclude(image_path="")
        .exclude(id__in=besides)
        .order_by("-created_at")
        .first()
        .values_list("id", flat=True)
    )
    if heir is not None:
        with contextlib.suppress(IntegrityError):  # an upload of it meanwhile was charged it
            await Prediction.filter(id=heir).update(image_bytes=size)


async def withdraw(prediction: Prediction) -> None:
    """Delete a prediction just made, its upload refused after all (a full Redis took nothing of its job). Its
    charge passes on (`pass_charge`): an upload of the same original by its person, made meanwhile, found it
    charged and was charged 0, and kept the original for free once it was deleted."""
    await Prediction.filter(id=prediction.id).delete()
    if prediction.image_bytes:
        user_id: int = prediction.user_id  # type: ignore[attr-defined]
        await pass_charge(user_id, prediction.image_sha256, prediction.image_bytes, [prediction.id])


def storers_sql() -> str:
    """The people keeping originals, or collections' images not read yet: one count, duplicates merged by
    the UNION (an account that stores nothing is not among them, so it does not shrink anyone's share).

    It walks the partial index of the predictions keeping an original by person (migration 0015), from one
    person to the next: a search per person, not a row per original (0.2 to 0.35 s a million before)."""
    predictions, collections = Prediction._meta.db_table, Collection._meta.db_table
    after = f"SELECT MIN(user_id) FROM {predictions} WHERE image_path <> ''"
    return (
        f"WITH RECURSIVE keeping (user_id) AS ({after} UNION ALL"
        f" SELECT ({after} AND user_id > keeping.user_id) FROM keeping WHERE keeping.user_id IS NOT NULL)"
        " SELECT COUNT(*) AS storers FROM (SELECT user_id FROM keeping WHERE user_id IS NOT NULL"
        f" UNION SELECT user_id FROM {collections} WHERE archive_path <> '') AS holding"
    )


async def storers() -> int:
    rows = await connections.get("default").execute_query_dict(storers_sql())
    return int(rows[0]["storers"])


class Storers:
    """One web process's count of the people storing originals, read at most every STORERS_TTL seconds, by
    one upload at a time: each upload that found it stale read it again until the first reading came back
    (20 at once, 20 reads)."""

    def __init__(self, ttl: float = STORERS_TTL) -> None:
        self.ttl = ttl
        self._count, self._read_at = 0, -math.inf
        self._reading = asyncio.Lock()

    def _stale(self) -> bool:
        return time.monotonic() - self._read_at > self.ttl

    async def count(self) -> int:
        if self._stale():
            async with self._reading:
                if self._stale():  # else read meanwhile, by the upload this one waited for
                    self._count, self._read_at = await storers(), time.monotonic()
        return self._count


async def _sum(rows: Any, field: str) -> int:
    found = await rows.annotate(total=Sum(field)).values_list("total", flat=True)
    total: Any = found[0] if found else None
    return int(total or 0)


async def queued(user_id: int) -> int:
    return await Prediction.filter(user_id=user_id, status=Status.QUEUED, collection_id__isnull=True).count()


async def sent_today(user_id: int, now: datetime) -> int:
    """Images sent in the last 24 hours: the predictions made, and the images of collections still being
    read, which become predictions only as they are read."""
    waiting = await unread(user_id)  # first: an image read in between is then counted twice, not missed
    return waiting + await Prediction.filter(user_id=user_id, created_at__gte=now - DAY).count()


async def unread(user_id: int) -> int:
    """The images of a person's collections that are not read yet (at most QUOTA_COLLECTIONS of them)."""
    reading = await Collection.filter(user_id=user_id, status=CollectionStatus.READING).values_list("id", "total")
    if not reading:
        return 0
    read = await Prediction.filter(collection_id__in=[i for i, _ in reading]).count()
    return max(sum(total for _, total in reading) - read, 0)


async def read_usage(user_id: int) -> Usage:
    now = datetime.now(UTC)
    return Usage(await queued(user_id), await sent_today(user_id, now), await stored_bytes(user_id), time.monotonic())


def _shift(usage: Usage, more: Usage, sign: int) -> None:
    usage.queued, usage.sent = usage.queued + sign * more.queued, usage.sent + sign * more.sent
    usage.stored += sign * more.stored


class UsageCache:
    """One web process's recent figures, by person, with the uploads it let through whose rows are not made yet
    (`going`): a reading of the database misses those, and 20 uploads sent at once against a quota of 3 had all
    read the same figures and all got in. A person's uploads are checked one at a time (`checking`)."""

    def __init__(self, ttl: float = USAGE_TTL) -> None:
        self.ttl = ttl
        self._people: dict[int, Usage] = {}
        self._going: dict[int, Usage] = {}
        self._checks: dict[int, tuple[asyncio.Lock, int]] = {}

    async def get(self, user_id: int) -> Usage:
        usage = self._people.get(user_id)
        if usage is None or time.monotonic() - usage.read_at > self.ttl:
            if len(self._people) >= MAX_PEOPLE:
                self._people.clear()
            going = self.going(user_id)  # before reading: one arriving meanwhile is then counted twice, not missed
            read = await read_usage(user_id)
            usage = Usage(read.queued + going.queued, read.sent + going.sent, read.stored + going.stored, read.read_at)
            self._people[user_id] = usage
        return usage

    def going(self, user_id: int) -> Usage:
        """This person's uploads on their way to the database, which a reading of it misses (a copy)."""
        return dataclasses.replace(self._going.get(user_id, Usage(0, 0, 0)))

    def counted(self, user_id: int, going: Usage) -> None:
        """Uploads that went ahead (waiting, images, bytes): on their way until `arrived`."""
        _shift(self._going.setdefault(user_id, Usage(0, 0, 0)), going, 1)
        if (usage := self._people.get(user_id)) is not None:
            _shift(usage, going, 1)

    def arrived(self, user_id: int, going: Usage) -> None:
        """Uploads `counted` have their rows made, or were refused: the database's figures tell the rest."""
        _shift(mine := self._going[user_id], going, -1)
        if not mine.sent:
            del self._going[user_id]

    @contextlib.asynccontextmanager
    async def checking(self, user_id: int) -> AsyncIterator[None]:
        """Held by one check of this person's uploads at a time, from the reading to `counted`."""
        lock, holders = self._checks.get(user_id, (asyncio.Lock(), 0))
        self._checks[user_id] = (lock, holders + 1)
        try:
            async with lock:
                yield
        finally:
            holders = self._checks[user_id][1] - 1
            if holders:
                self._checks[user_id] = (lock, holders)
            else:
                del self._checks[user_id]

    def forget(self, user_id: int) -> None:
        self._people.pop(user_id, None)
