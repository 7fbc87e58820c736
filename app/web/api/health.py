"""Liveness and readiness."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from litestar import Request, Response, get
from litestar.openapi import ResponseSpec
from litestar.status_codes import HTTP_503_SERVICE_UNAVAILABLE
from tortoise import connections

from app.jobs.producer import Workers, queue_depth, workers_of
from app.services import Services
from app.web.api.schemas import Health, Readiness, WorkerBackend
from app.web.deps import services

READY_RETRY_AFTER = 5
READING = "readiness_reading"  # the app state's key of the reading in progress


@get("/health/live", tags=["health"], summary="The web process is up", exclude_from_auth=True)
async def live() -> Health:
    return Health("ok")


async def _database_ok() -> bool:
    with contextlib.suppress(Exception):
        await connections.get("default").execute_query("SELECT 1")
        return True
    return False


async def _readiness(svc: Services) -> tuple[bool, Readiness]:
    database = await _database_ok()
    redis = False
    workers = Workers([], [])
    depth: int | None = None
    model = svc.settings.model_id
    with contextlib.suppress(Exception):
        workers, depth = await workers_of(svc.redis, model), await queue_depth(svc.redis)
        redis = True
    ok = database and redis and len(workers.mine) > 0
    backends = [WorkerBackend(b.name, b.backend, b.engine, b.backend_choice) for b in workers.mine]
    others = {b.name: b.model_id for b in workers.others}
    return ok, Readiness(
        database, redis, len(workers.mine), depth, "ready" if ok else "not ready", backends, model, others
    )


def shared_reading(request: Request[Any, Any, Any]) -> asyncio.Future[tuple[bool, Readiness]]:
    """The reading in progress, else a new one: probes at once share one. /health/ready is public and counted
    against no sender (app/web/limits.py UNCOUNTED): 300 at once from one address each took a database query and
    14.5 Redis commands (reading every stream's length), now 2.8 a probe in all (measured)."""
    state = request.app.state
    reading: asyncio.Future[tuple[bool, Readiness]] | None = state.get(READING)
    if reading is None or reading.done():
        reading = state[READING] = asyncio.ensure_future(_readiness(services(request)))
    return reading


@get(
    "/health/ready",
    tags=["health"],
    summary="Database, Redis and at least one worker of this app's model are available",
    responses={HTTP_503_SERVICE_UNAVAILABLE: ResponseSpec(Readiness, description="Something is missing")},
)
async def ready(request: Request[Any, Any, Any]) -> Response[Readiness]:
    ok, checks = await asyncio.shield(shared_reading(request))  # a probe gone does not cancel the others' reading
    if ok:
        return Response(checks)
    # Like every 503 of this service, it says when to ask again.
    return Response(checks, status_code=HTTP_503_SERVICE_UNAVAILABLE, headers={"Retry-After": str(READY_RETRY_AFTER)})


routes = [live, ready]
