"""Bounds on what one request may be, checked before any handler runs: header count and size (431),
control characters in the path and query (400), JSON nesting depth (400). Body sizes are Litestar's
`request_max_body_size` (see app/web/app.py)."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote_to_bytes

from litestar.exceptions import ClientException, HTTPException
from litestar.plugins.htmx import HTMXRequest
from litestar.status_codes import HTTP_431_REQUEST_HEADER_FIELDS_TOO_LARGE
from litestar.types import ASGIApp, Receive, Scope, Send

MAX_HEADERS = 100
MAX_HEADER_BYTES = 16 * 1024  # names and values together: browsers send 1-3 kB
MAX_JSON_DEPTH = 32  # every body the API takes is 3 levels deep
_CONTROL_BYTES = bytes(range(0x20)) + b"\x7f"


def check_headers(headers: list[tuple[bytes, bytes]]) -> None:
    size = sum(len(name) + len(value) for name, value in headers)
    if len(headers) > MAX_HEADERS or size > MAX_HEADER_BYTES:
        raise HTTPException(
            status_code=HTTP_431_REQUEST_HEADER_FIELDS_TOO_LARGE,
            detail=f"Too many or too large headers: at most {MAX_HEADERS} headers and {MAX_HEADER_BYTES} bytes",
        )


def check_target(path: str, query: bytes) -> None:
    """No control characters in the path or the (decoded) query: they reach file names and the database."""
    raw = path.encode("utf-8", "surrogateescape") + unquote_to_bytes(query)
    if any(byte in _CONTROL_BYTES for byte in raw):
        raise ClientException("The address contains control characters")


class RequestLimits:
    """Middleware: refuse out-of-bounds requests before any handler reads them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            check_headers(list(scope["headers"]))
            check_target(scope["path"], scope.get("query_string", b""))
        await self.app(scope, receive, send)


def json_depth(value: Any, limit: int) -> int:
    """How deep `value` nests (a scalar: 0), counting no further than `limit` + 1; no recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack and deepest <= limit:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


class LimitedRequest(HTMXRequest):
    """The request class of the app (HTMX's, which the pages need) with a bound on JSON nesting: a decoder
    running out of stack is a bad body, not a server error."""

    async def json(self) -> Any:
        try:
            value = await super().json()
        except RecursionError:
            raise ClientException(f"The JSON body nests deeper than {MAX_JSON_DEPTH} levels") from None
        if json_depth(value, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
            raise ClientException(f"The JSON body nests deeper than {MAX_JSON_DEPTH} levels")
        return value
