"""Nothing accepted is lost: predictions still queued long after they went on a stream, whose job Redis
no longer has, go back to the feeder (app/feeder.py), which enqueues them again from their stored
originals (the database is the system of record, Redis is not)."""

from __future__ import annotations

import logging
import math
import time
from datetime import UTC, datetime, timedelta

from app import keys
from app.background import Every
from app.jobs import producer
from app.models import Prediction, Status
from app.outages import redis_full
from app.services import Services

log = logging.getLogger(__name__)
# Rows read at a time: a round goes on batch after batch while they come full, so memory stays bounded
# and a Redis restarted empty has its 10,000 lost jobs handed back in one round, not BATCH a round (50 min).
BATCH = 200


async def requeue_stale(services: Services, until: float = math.inf) -> int:
    """Hand back to the feeder the predictions that went on a stream more than REQUEUE_AFTER ago and whose
    job Redis no longer has, BATCH at a time while batches come full and time.monotonic() is before `until`.
    Should one turn out a duplicate, it costs a model call but never a second result: workers only finish
    queued rows. The feeder puts them on the streams within its own bounds (app/feeder.py)."""
    cutoff = datetime.now(UTC) - timedelta(seconds=services.settings.requeue_after)
    handed_back = 0
    while True:
        looked, lost = await _requeue_batch(services, cutoff)
        handed_back += lost
        if looked < BATCH or time.monotonic() >= until:
            break
    if handed_back:
        log.warning("handed %d stale queued predictions back to the feeder", handed_back)
    return handed_back


async def _requeue_batch(services: Services, cutoff: datetime) -> tuple[int, int]:
    """One batch: how many stale predictions it looked at, and how many of them it handed back. Each one
    looked at leaves the next batch's query (marked just looked at, or handed back)."""
    stale = await (
        Prediction.filter(status=Status.QUEUED, enqueued_at__lt=cutoff)
        .order_by("created_at")
        .limit(BATCH)
        .values_list("id", flat=True)
    )
    ids = [str(prediction_id) for prediction_id in stale]
    on_streams = await producer.with_jobs(services.redis, ids)
    # Still on a stream (waiting, or reclaimable from a dead worker): look again later.
    still = [i for i in ids if i in on_streams]
    lost = [i for i in ids if i not in on_streams]
    if still:
        await Prediction.filter(id__in=still).update(enqueued_at=datetime.now(UTC))
    if lost:
        await Prediction.filter(id__in=lost, status=Status.QUEUED).update(enqueued_at=None)
        services.nudge_feeder()  # feeding starts while later batches are looked at
    return len(ids), len(lost)


async def _requeue_round(services: Services, every: float) -> None:
    lock_s = max(int(every), 1)
    try:
        if await services.redis.set(keys.REQUEUE_LOCK, "1", nx=True, ex=lock_s):
            # Done well within the lock's time, so that no other process starts a round meanwhile.
            await requeue_stale(services, until=time.monotonic() + lock_s / 2)
    except Exception as exc:  # a dependency is down or full: try again next round
        if redis_full(exc):  # no fault of the code's: no traceback
            log.warning("Redis is full (%r): stale predictions are looked for once there is room", exc)
        else:
            log.warning("could not look for stale predictions", exc_info=True)


def requeue_forever(services: Services) -> Every:
    """Every web process runs this; a Redis lock lets one of them do the work each round."""
    every = max(services.settings.requeue_after / 5, 1.0)
    return Every(every, lambda: _requeue_round(services, every), name="requeue", wait_first=True)
