"""What request handlers share within one web process: settings, Redis, the result waiter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from litestar.connection import ASGIConnection
from redis.asyncio import Redis

from app.queue import ResultWaiter
from app.security import LoginThrottle
from app.settings import Settings


@dataclass
class Services:
    settings: Settings
    redis: Redis
    waiter: ResultWaiter
    throttle: LoginThrottle


def services(connection: ASGIConnection[Any, Any, Any, Any]) -> Services:
    found: Services = connection.app.state.services
    return found


def client_address(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    return connection.client.host if connection.client else "unknown"
