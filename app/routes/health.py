"""Liveness and readiness."""

from __future__ import annotations

import contextlib
from typing import Any

from litestar import Request, Response, get
from litestar.status_codes import HTTP_200_OK, HTTP_503_SERVICE_UNAVAILABLE
from tortoise import connections

from app import queue
from app.services import services


@get("/health/live", tags=["health"], summary="The web process is up", exclude_from_auth=True)
async def live() -> dict[str, str]:
    return {"status": "ok"}


async def _database_ok() -> bool:
    with contextlib.suppress(Exception):
        await connections.get("default").execute_query("SELECT 1")
        return True
    return False


@get("/health/ready", tags=["health"], summary="Database, Redis and at least one worker are available")
async def ready(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    checks: dict[str, Any] = {
        "database": await _database_ok(),
        "redis": False,
        "workers": 0,
        "queue_depth": None,
    }
    with contextlib.suppress(Exception):
        capacity = await queue.capacity(services(request).redis)
        checks.update(redis=True, workers=capacity.workers, queue_depth=capacity.depth)
    ok = bool(checks["database"] and checks["redis"] and checks["workers"])
    checks["status"] = "ready" if ok else "not ready"
    return Response(checks, status_code=HTTP_200_OK if ok else HTTP_503_SERVICE_UNAVAILABLE)


routes = [live, ready]
