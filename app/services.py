"""What one web process shares between requests: settings, Redis, the result waiter, the throttle, the
decode processes, the disk's use, the pixels kept for the feeder.
Built once by the web app's lifespan; the domain modules take it as an argument."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Protocol

from redis.asyncio import Redis

from app.exports import EXPORT_STEPS
from app.files import DiskUsage
from app.jobs.producer import BacklogView
from app.jobs.results import ResultWaiter
from app.sandbox import DecodePool
from app.settings import Settings
from app.throttles import Throttle
from app.turns import Turns
from app.usage import Storers, UsageCache

# Kept pixels older than this are let go: their item was fed by another web process, or is far behind.
KEPT_PIXELS_S = 120.0
# Steps of the collections' readings (each a decode process's worth of entries) a process takes at once:
# two, so that one is decoded while the other is read or recorded.
READING_STEPS = 2
# Collections a process reads at once, each holding its archive open and, for a zip, its directory in
# memory (6.7 MB for 10,000 entries); at most READING_STEPS of them one person's, which keep that
# person's turns of steps busy. The others wait for a place, in turns by person, their archives shut.
OPEN_READINGS = 16


class KeptPixels:
    """The 224 x 224 pixels of images accepted to wait in the database (collection items, async jobs),
    by prediction id, for this process's feeder: an image it feeds soon after is not decoded a second time
    from its stored original (a decode is most of an image's cost on the web side). Bounded: at most
    `limit` images (~150 kB each), each for at most KEPT_PIXELS_S; past that, the feeder decodes again."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._kept: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def keep(self, prediction_id: str, pixels: bytes) -> None:
        now = time.monotonic()
        while self._kept and next(iter(self._kept.values()))[0] < now - KEPT_PIXELS_S:
            self._kept.popitem(last=False)
        if len(self._kept) < self.limit:
            self._kept[prediction_id] = (now, pixels)

    def take(self, prediction_id: str) -> bytes | None:
        found = self._kept.pop(prediction_id, None)
        return None if found is None else found[1]

    def __len__(self) -> int:
        return len(self._kept)


class Wakeable(Protocol):
    def nudge(self) -> None: ...


@dataclass
class Services:
    settings: Settings
    redis: Redis
    waiter: ResultWaiter
    throttle: Throttle
    # Every decode of uploaded bytes goes through it (app/sandbox.py).
    decoder: DecodePool
    # The feeder (app/feeder.py), once started: told when work starts waiting in the database.
    feeder: Wakeable | None = None
    # The bytes under UPLOAD_DIR, measured by a background loop (app/files.py), for the disk bound.
    disk: DiskUsage = field(default_factory=DiskUsage)
    # People's recent use, for the quotas of single uploads (app/usage.py).
    usage: UsageCache = field(default_factory=UsageCache)
    # How many people store originals, for their shares of a crowded store (app/quotas.py).
    storers: Storers = field(default_factory=Storers)
    # The workers' backlog, for the wait estimate of synchronous uploads (app/jobs/producer.py).
    backlog: BacklogView = field(default_factory=BacklogView)
    # Pixels of waiting images for the feeder, at most a feed window of them (app/feeder.py).
    kept: KeptPixels = field(init=False)
    # The steps of the collections' readings, in turns by person (app/collections.py).
    reading: Turns = field(default_factory=lambda: Turns(READING_STEPS))
    # The collections' readings with their archives open, in turns by person (app/collections.py).
    open_readings: Turns = field(default_factory=lambda: Turns(OPEN_READINGS, per_owner=READING_STEPS))
    # The pages of the CSV exports, in turns by person (app/exports.py).
    exports: Turns = field(default_factory=lambda: Turns(EXPORT_STEPS, per_owner=1))
    # Held from counting the async queue to adding to it (app/predictions.py): uploads sent at once all
    # counted the same queue, and all got in past its bound.
    admitting: asyncio.Lock = field(default_factory=asyncio.Lock)

    def __post_init__(self) -> None:
        self.kept = KeptPixels(self.settings.feed_window)

    def nudge_feeder(self) -> None:
        if self.feeder is not None:
            self.feeder.nudge()
