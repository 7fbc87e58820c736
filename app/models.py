"""The system of record: users, their predictions and their feedback."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any
from uuid import UUID

from tortoise import connections, fields
from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.models import Model
from tortoise.queryset import QuerySet


class Status(StrEnum):
    QUEUED = "queued"
    DONE = "done"
    FAILED = "failed"


class CollectionStatus(StrEnum):
    READING = "reading"  # the archive is being read: items appear as they are checked
    CLASSIFYING = "classifying"
    DONE = "done"


class User(Model):
    id = fields.IntField(primary_key=True)
    email = fields.CharField(max_length=254, unique=True)
    name = fields.CharField(max_length=100, default="")
    password_hash = fields.CharField(max_length=255)
    is_admin = fields.BooleanField(default=False)
    created_at = fields.DatetimeField(auto_now_add=True)

    predictions: fields.ReverseRelation[Prediction]

    class Meta:
        table = "users"
        indexes = (("created_at",),)  # newest first: the admin's list of accounts (app.web.pages.admin.accounts)


# Many images classified together (a folder, a zip); each image is a Prediction of it.
# (A comment, not a docstring: Tortoise turns docstrings into table comments, which SQLite refuses.)
class Collection(Model):
    id = fields.UUIDField(primary_key=True)
    user: fields.ForeignKeyRelation[User] = fields.ForeignKeyField(
        "app.User", related_name="collections", on_delete=fields.CASCADE
    )
    name = fields.CharField(max_length=255, default="")
    total = fields.IntField(default=0)
    status = fields.CharEnumField(CollectionStatus, max_length=12, default=CollectionStatus.CLASSIFYING, db_index=True)
    # The stored archive while it is read in the background (relative to UPLOAD_DIR); "" once read.
    archive_path = fields.CharField(max_length=255, default="")
    # What it counts toward the person's stored bytes while it is read: its images' bytes once expanded (its
    # archive's where they are more). A database default too, so a web process of the release before (a
    # rolling upgrade) can still create collections once the column is there.
    archive_bytes = fields.BigIntField(default=0, db_default=0)
    error = fields.TextField(null=True)  # why reading the archive stopped, if it did
    # Its images done and failed, counted as it is done (they change no more after), so that the history and the
    # API read two numbers, not its 10,000 images, each time. Null before then, and if done before 0013.
    done_count = fields.IntField(null=True)
    failed_count = fields.IntField(null=True)
    created_at = fields.DatetimeField(auto_now_add=True, db_index=True)

    predictions: fields.ReverseRelation[Prediction]

    class Meta:
        table = "collections"
        ordering = ["-created_at"]
        indexes = (("user_id", "created_at", "id"),)  # a person's, newest first: `of_person`

    @classmethod
    def of_person(cls, user: User) -> QuerySet[Collection]:
        """A person's collections, the newest first (the history page, GET /api/collections), by the index on
        (user_id, created_at, id): without it every person's were read for each history page. Ties by the id, so
        that a page after an item (`before`) neither repeats nor skips one."""
        return cls.filter(user_id=user.id).order_by("-created_at", "-id")


class Prediction(Model):
    # A random UUID: ids in URLs must not be guessable.
    id = fields.UUIDField(primary_key=True)
    user: fields.ForeignKeyRelation[User] = fields.ForeignKeyField(
        "app.User", related_name="predictions", on_delete=fields.CASCADE
    )
    collection: fields.ForeignKeyNullableRelation[Collection] = fields.ForeignKeyField(
        "app.Collection", related_name="predictions", on_delete=fields.CASCADE, null=True
    )
    # Its entry's place in its collection's archive: unique there, so a reading taken over (its lock lost
    # with a restarted Redis) cannot record an entry twice.
    entry = fields.IntField(null=True)
    image_sha256 = fields.CharField(max_length=64, db_index=True)
    image_path = fields.CharField(max_length=255)  # "" once the original is pruned
    # The original's size, for the storage quotas, on one of its person's predictions that keep it (0 on the
    # others: app/usage.py charged_bytes); a partial unique index holds it to one (migrations/0016).
    image_bytes = fields.BigIntField(default=0)
    file_name = fields.CharField(max_length=255, default="")
    status = fields.CharEnumField(Status, max_length=10, default=Status.QUEUED, db_index=True)
    label = fields.CharField(max_length=100, null=True)
    wnid = fields.CharField(max_length=16, null=True)
    score = fields.FloatField(null=True)
    top5: fields.Field[list[dict[str, Any]] | None] = fields.JSONField(null=True)
    model_name = fields.CharField(max_length=50)
    model_version = fields.CharField(max_length=50, default="")
    model_weights = fields.CharField(max_length=100)
    cached = fields.BooleanField(default=False)
    latency_ms = fields.FloatField(null=True)
    error = fields.TextField(null=True)
    created_at = fields.DatetimeField(auto_now_add=True, db_index=True)
    updated_at = fields.DatetimeField(auto_now=True)
    finished_at = fields.DatetimeField(null=True)
    # When its job was put on a stream; null while it waits in the database for the feeder.
    enqueued_at = fields.DatetimeField(null=True)

    feedback: fields.ReverseRelation[Feedback]

    class Meta:
        table = "predictions"
        ordering = ["-created_at"]
        # A user's predictions by time: the history pages and the per-user quotas (app/quotas.py). An image's
        # finished results: an upload of it again (app.predictions.earlier_result); without both columns SQLite
        # chose the status index and read every finished row per upload. The predictions finished lately: the
        # admin's status panel, every two seconds (app.web.pages.admin.recently_finished). A person's single
        # images by time: the history page, which read all their collections' images to find them. The images
        # of a person or collection waiting in the database, oldest first: the feeder (app.feeder.waiting_of).
        # Those keeping an original, by person: a partial index, made by migration 0015 (app.usage.storers_sql).
        indexes = (
            ("user_id", "created_at", "id"),
            ("image_sha256", "status"),
            ("finished_at",),
            ("user_id", "collection_id", "created_at", "id"),
            ("status", "user_id", "collection_id", "created_at"),
        )
        unique_together = (("collection", "entry"),)

    @classmethod
    def of_person(cls, user: User) -> QuerySet[Prediction]:
        """A person's predictions, the newest first, ties by the id (GET /api/predictions), by the index on
        (user_id, created_at, id)."""
        return cls.filter(user_id=user.id).order_by("-created_at", "-id")


class Feedback(Model):
    id = fields.IntField(primary_key=True)
    prediction: fields.ForeignKeyRelation[Prediction] = fields.ForeignKeyField(
        "app.Prediction", related_name="feedback", on_delete=fields.CASCADE
    )
    user: fields.ForeignKeyRelation[User] = fields.ForeignKeyField(
        "app.User", related_name="feedback", on_delete=fields.CASCADE
    )
    is_correct = fields.BooleanField()
    # The prediction's label (fixed once it is done, and feedback is given only then), copied by the database as
    # the row is inserted (a trigger, migration 0020): the filters by it read an index of this table, not every
    # row of the person joined to its prediction.
    predicted_label = fields.CharField(max_length=100, null=True)
    correct_label = fields.CharField(max_length=100, null=True)
    correct_wnid = fields.CharField(max_length=16, null=True)
    comment = fields.TextField(default="")
    created_at = fields.DatetimeField(auto_now_add=True)
    updated_at = fields.DatetimeField(auto_now=True)

    class Meta:
        table = "feedback"
        unique_together = (("prediction", "user"),)
        # Newest first: a person's (GET /api/feedback), everyone's (an admin's, and the admin page's); each
        # also by predicted label, and by whether it was right (the filters of both).
        indexes = (
            ("user_id", "updated_at", "id"),
            ("updated_at", "id"),
            ("user_id", "predicted_label", "updated_at", "id"),
            ("user_id", "is_correct", "updated_at", "id"),
            ("predicted_label", "updated_at", "id"),
            ("is_correct", "updated_at", "id"),
        )


# Feedback counted per predicted label, for the admin's agreement table and label filter, which read every
# feedback row joined to its prediction on each view. Kept by the database itself, in the transaction of each
# change, whatever makes it (feedback given or changed, a prediction or account deleted with its feedback): by
# triggers on feedback and predictions, made with the table by migration 0014. A label with no feedback left
# has no row. A prediction without a label counts under "".
class FeedbackByLabel(Model):
    label = fields.CharField(max_length=100, primary_key=True)
    total = fields.IntField()
    agreed = fields.IntField()  # feedback saying the prediction was right

    class Meta:
        table = "feedback_by_label"


def deferred(prediction: Prediction) -> bool:
    """Queued in the database, not on a stream: the feeder puts it there, and a worker, once one is alive,
    takes it (a synchronous upload gets `enqueued_at` as it is enqueued)."""
    return prediction.status == Status.QUEUED and prediction.enqueued_at is None


async def mark_failed(prediction_ids: Iterable[str], error: str) -> list[str]:
    """Finish the predictions still queued as failed, with the reason; the ids that were (a malformed
    id, from a damaged job, is skipped)."""
    failed = []
    for prediction_id in prediction_ids:
        with contextlib.suppress(ValueError):
            if await Prediction.filter(id=prediction_id, status=Status.QUEUED).update(
                status=Status.FAILED, error=error, finished_at=datetime.now(UTC)
            ):
                failed.append(prediction_id)
    return failed


def placeholders(dialect: str, count: int) -> list[str]:
    """The marks of a statement's `count` values, in the connection's dialect (SQLite's `?`, else `$n`)."""
    return ["?"] * count if dialect == "sqlite" else [f"${n}" for n in range(1, count + 1)]


async def finish_queued(
    prediction_ids: list[str], values: dict[str, Any], connection: BaseDBAsyncClient | None = None
) -> int:
    """`Prediction.filter(id__in=prediction_ids, status=QUEUED).update(**values)`, written out: the worker
    finishes every job so, and the query builder cost it 0.49 ms of CPU per job against 0.16 for this
    (SQLite, measured). How many rows it finished."""
    if not prediction_ids:
        return 0  # `IN ()` is not SQL everywhere
    connection = connection or connections.get("default")
    fields_map = Prediction._meta.fields_map
    marks = placeholders(connection.capabilities.dialect, len(values) + len(prediction_ids) + 1)
    columns = [Prediction._meta.fields_db_projection[name] for name in values]
    sets = ", ".join(f"{column} = {mark}" for column, mark in zip(columns, marks, strict=False))
    ids = ", ".join(marks[len(values) : -1])
    sql = f"UPDATE {Prediction._meta.db_table} SET {sets} WHERE id IN ({ids}) AND status = {marks[-1]}"
    arguments = [fields_map[name].to_db_value(value, Prediction) for name, value in values.items()]
    arguments += [fields_map["id"].to_db_value(UUID(i), Prediction) for i in prediction_ids]
    updated, _ = await connection.execute_query(sql, [*arguments, Status.QUEUED.value])
    return int(updated)
