"""Nothing accepted is lost: predictions still queued long after they went on a stream, whose job Redis
no longer has, go back to the feeder (app/feeder.py), which enqueues them again from their stored
originals (the database is the system of record, Redis is not)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from app import keys
from app.background import Every
from app.jobs import producer
from app.models import Prediction, Status
from app.services import Services

log = logging.getLogger(__name__)
BATCH = 200


async def requeue_stale(services: Services) -> int:
    """Hand back to the feeder the predictions that went on a stream more than REQUEUE_AFTER ago and whose
    job Redis no longer has. Should one turn out a duplicate, it costs a model call but never a second
    result: workers only finish queued rows."""
    cutoff = datetime.now(UTC) - timedelta(seconds=services.settings.requeue_after)
    stale = await Prediction.filter(status=Status.QUEUED, enqueued_at__lt=cutoff).order_by("created_at").limit(BATCH)
    lost = []
    for prediction in stale:
        if await producer.has_job(services.redis, str(prediction.id)):
            # Still on a stream (waiting, or reclaimable from a dead worker): look again later.
            await Prediction.filter(id=prediction.id).update(enqueued_at=datetime.now(UTC))
        else:
            lost.append(prediction.id)
    if lost:
        await Prediction.filter(id__in=lost, status=Status.QUEUED).update(enqueued_at=None)
        services.nudge_feeder()
        log.warning("handed %d of %d stale queued predictions back to the feeder", len(lost), len(stale))
    return len(lost)


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
