"""What one web process shares between requests: settings, Redis, the result waiter, the throttle, the
decode processes, the disk's use.
Built once by the web app's lifespan; the domain modules take it as an argument."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from redis.asyncio import Redis

from app.files import DiskUsage
from app.jobs.producer import BacklogView
from app.jobs.results import ResultWaiter
from app.sandbox import DecodePool
from app.settings import Settings
from app.throttles import Throttle
from app.usage import UsageCache


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
    # The workers' backlog, for the wait estimate of synchronous uploads (app/jobs/producer.py).
    backlog: BacklogView = field(default_factory=BacklogView)

    def nudge_feeder(self) -> None:
        if self.feeder is not None:
            self.feeder.nudge()
