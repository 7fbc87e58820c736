"""One place that turns exceptions into responses: JSON of one shape for the API, pages for people."""

from __future__ import annotations

import logging
from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException
from litestar.status_codes import (
    HTTP_400_BAD_REQUEST,
    HTTP_500_INTERNAL_SERVER_ERROR,
    HTTP_503_SERVICE_UNAVAILABLE,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from tortoise.exceptions import DBConnectionError

log = logging.getLogger(__name__)

# A dependency that is down is the service's problem for now, not a bug: 503 with Retry-After.
DEPENDENCY_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    DBConnectionError,
    ConnectionError,
)
try:  # asyncpg is there with PostgreSQL
    import asyncpg

    DEPENDENCY_ERRORS += (asyncpg.CannotConnectNowError, asyncpg.ConnectionDoesNotExistError)
except ImportError:  # pragma: no cover
    pass


def wants_json(request: Request[Any, Any, Any]) -> bool:
    path = request.url.path
    return (
        path.startswith(("/api", "/health", "/metrics", "/schema"))
        or "application/json" in request.headers.get("accept", "").split(",")[0]
    )


def error_body(exc: Exception) -> tuple[int, str, dict[str, str], Any]:
    """(status, detail, headers, extra) for any exception."""
    if isinstance(exc, HTTPException):
        return exc.status_code, exc.detail, dict(exc.headers or {}), exc.extra
    if isinstance(exc, UnicodeDecodeError):
        # Litestar's multipart parser raises this for a text part that is not UTF-8.
        return HTTP_400_BAD_REQUEST, "The request body is malformed: a text field is not valid UTF-8", {}, None
    if isinstance(exc, DEPENDENCY_ERRORS):
        log.warning("dependency unavailable: %r", exc)
        return (
            HTTP_503_SERVICE_UNAVAILABLE,
            "A service this depends on is unavailable; try again shortly",
            {"Retry-After": "5"},
            None,
        )
    log.exception("unhandled error", exc_info=exc)
    return HTTP_500_INTERNAL_SERVER_ERROR, "Internal server error", {}, None


def json_error(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    status, detail, headers, extra = error_body(exc)
    body: dict[str, Any] = {"status_code": status, "detail": detail}
    if extra:
        body["extra"] = extra
    return Response(body, status_code=status, headers=headers, media_type=MediaType.JSON)


def handle(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    if wants_json(request):
        return json_error(request, exc)
    from app.routes.pages import error_page  # the pages own their templates

    return error_page(request, exc)
