"""Collections: many images classified together, read from several files or one zip archive.

Each image is checked exactly as a single upload is and becomes a Prediction of the collection; a bad
one is recorded as failed with its reason and the rest go on. Duplicates, and images classified
before, cost no model work.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from tortoise.functions import Count

from app import images, predictions, text
from app.archives import Upload, refuse
from app.exports import to_csv
from app.jobs.producer import enqueue_bulk
from app.jobs.protocol import Job
from app.models import Collection, Prediction, Status, User
from app.services import Services


async def _create_items(services: Services, collection: Collection, user: User, uploads: list[Upload]) -> list[Job]:
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
                file_name=text.clean_file_name(upload.name),
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
        Job(str(p.id), sha, settings.model_id, image.pixels, also=tuple(followers.get(sha, ())))
        for sha, (p, image) in first.items()
    ]


async def create(services: Services, user: User, uploads: list[Upload], name: str = "") -> Collection:
    if not uploads:
        raise refuse("Send at least one image: several `files`, or one zip `archive`")
    if len(uploads) > services.settings.max_collection_files:
        raise refuse(f"At most {services.settings.max_collection_files} images in one collection", 413)
    if problem := text.text_problem(name, "The collection name"):
        raise refuse(problem)
    collection = await Collection.create(user=user, name=name[:255], total=len(uploads))
    jobs = await _create_items(services, collection, user, uploads)
    await enqueue_bulk(services.redis, user.id, jobs)
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


async def visible_collection(user: User, collection_id: Any) -> Collection:
    return await predictions.visible(Collection, user, collection_id, "collection")


def items(collection: Collection, status: str | None = None, label: str | None = None) -> Any:
    query = Prediction.filter(collection=collection)
    if status:
        query = query.filter(status=status)
    if label:
        query = query.filter(label__iexact=label)  # typed by people as often as chosen from a list
    return query.order_by("file_name", "created_at")


async def results_csv(user: User, collection_id: Any) -> tuple[str, str]:
    """(file name, CSV) of the results of a collection its owner (or an admin) may see."""
    collection = await visible_collection(user, collection_id)
    return f"collection-{collection.id}.csv", to_csv(predictions.result_dict(p) for p in await items(collection))
