"""Liveness and readiness."""

from __future__ import annotations

import contextlib
from typing import Any

from litestar import Request, Response, get
from litestar.openapi import ResponseSpec
from litestar.status_codes import HTTP_503_SERVICE_UNAVAILABLE
from tortoise import connections

from app.jobs.producer import Workers, queue_depth, workers_of
from app.web.api.schemas import Health, Readiness, WorkerBackend
from app.web.deps import services

READY_RETRY_AFTER = 5


@get("/health/live", tags=["health"], summary="The web process is up", exclude_from_auth=True)
async def live() -> Health:
    return Health("ok")


async def _database_ok() -> bool:
    with contextlib.suppress(Exception):
        await connections.get("default").execute_query("SELECT 1")
        return True
    return False


@get(
    "/health/ready",
    tags=["health"],
    summary="Database, Redis and at least one worker of this app's model are available",
    responses={HTTP_503_SERVICE_UNAVAILABLE: ResponseSpec(Readiness, description="Something is missing")},
)
async def ready(request: Request[Any, Any, Any]) -> Response[Readiness]:
    database = await _database_ok()
    redis = False
    workers = Workers([], [])
    depth: int | None = None
    model = services(request).settings.model_id
    with contextlib.suppress(Exception):
        redis_client = services(request).redis
        workers, depth = await workers_of(redis_client, model), await queue_depth(redis_client)
        redis = True
    ok = database and redis and len(workers.mine) > 0
    backends = [WorkerBackend(b.name, b.backend, b.engine, b.backend_choice) for b in workers.mine]
    others = {b.name: b.model_id for b in workers.others}
    status = "ready" if ok else "not ready"
    checks = Readiness(database, redis, len(workers.mine), depth, status, backends, model, others)
    if ok:
        return Response(checks)
    # Like every 503 of this service, it says when to ask again.
    return Response(checks, status_code=HTTP_503_SERVICE_UNAVAILABLE, headers={"Retry-After": str(READY_RETRY_AFTER)})


routes = [live, ready]
