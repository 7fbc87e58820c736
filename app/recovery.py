"""Nothing accepted is lost: predictions still queued long after they were enqueued go on the stream
again, rebuilt from their stored originals (the database is the system of record, Redis is not)."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

from app import images, keys
from app.background import Every
from app.jobs import producer
from app.jobs.protocol import Job
from app.models import Prediction, Status, mark_failed
from app.services import Services

log = logging.getLogger(__name__)
BATCH = 200


async def _requeue_one(services: Services, prediction: Prediction) -> bool:
    settings = services.settings
    path = settings.upload_dir / prediction.image_path
    try:
        data = await asyncio.to_thread(Path.read_bytes, path)
        image = await asyncio.to_thread(images.check, data, settings.max_upload_bytes, settings.max_image_pixels)
    except (OSError, images.ImageRejected) as exc:
        await mark_failed([str(prediction.id)], f"The stored original could not be read again: {exc}")
        return False
    job = Job(str(prediction.id), image.sha256, settings.model_id, image.pixels)
    if prediction.collection_id is None:  # type: ignore[attr-defined]
        await producer.enqueue(services.redis, job)
    else:  # bulk work stays bulk work: behind single uploads, in its owner's share
        await producer.enqueue_bulk(services.redis, prediction.user_id, [job])  # type: ignore[attr-defined]
    # Marks when it was last enqueued: it is not enqueued again for another REQUEUE_AFTER.
    await Prediction.filter(id=prediction.id, status=Status.QUEUED).update(updated_at=datetime.now(UTC))
    return True


async def requeue_stale(services: Services) -> int:
    """Enqueue again the predictions queued for longer than REQUEUE_AFTER whose job Redis no longer
    has. Should one turn out a duplicate, it costs a model call but never a second result: workers
    only finish queued rows."""
    cutoff = datetime.now(UTC) - timedelta(seconds=services.settings.requeue_after)
    stale = await Prediction.filter(status=Status.QUEUED, updated_at__lt=cutoff).order_by("created_at").limit(BATCH)
    requeued = 0
    for prediction in stale:
        if await producer.has_job(services.redis, str(prediction.id)):
            # Still on a stream (waiting, or reclaimable from a dead worker): look again later.
            await Prediction.filter(id=prediction.id).update(updated_at=datetime.now(UTC))
        else:
            requeued += await _requeue_one(services, prediction)
    if stale:
        log.warning("re-enqueued %d of %d stale queued predictions", requeued, len(stale))
    return requeued


async def _requeue_round(services: Services, every: float) -> None:
    try:
        if await services.redis.set(keys.REQUEUE_LOCK, "1", nx=True, ex=max(int(every), 1)):
            await requeue_stale(services)
    except Exception:  # a dependency is down: try again next round
        log.warning("could not look for stale predictions", exc_info=True)


def requeue_forever(services: Services) -> Every:
    """Every web process runs this; a Redis lock lets one of them do the work each round."""
    every = max(services.settings.requeue_after / 5, 1.0)
    return Every(every, lambda: _requeue_round(services, every), name="requeue", wait_first=True)
