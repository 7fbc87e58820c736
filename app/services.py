"""What one web process shares between requests: settings, Redis, the result waiter, the throttle.
Built once by the web app's lifespan; the domain modules take it as an argument."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from app.jobs.results import ResultWaiter
from app.settings import Settings
from app.throttles import Throttle


@dataclass
class Services:
    settings: Settings
    redis: Redis
    waiter: ResultWaiter
    throttle: Throttle
