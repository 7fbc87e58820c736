"""One place that turns exceptions into responses: JSON of one shape for the API, pages for people."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

import msgspec
from litestar import MediaType, Request, Response
from litestar.exceptions import ClientException, HTTPException, InternalServerException
from litestar.status_codes import (
    HTTP_400_BAD_REQUEST,
    HTTP_401_UNAUTHORIZED,
    HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    HTTP_500_INTERNAL_SERVER_ERROR,
    HTTP_503_SERVICE_UNAVAILABLE,
    HTTP_504_GATEWAY_TIMEOUT,
    HTTP_507_INSUFFICIENT_STORAGE,
)

from app.outages import DEPENDENCY_ERRORS, database_busy, redis_full
from app.web.deps import AnyRequest
from app.web.limits import FORM_ROUTE, FORM_TOO_LARGE
from app.web.rendering import render, wants_partial
from app.web.sessions import login_url, signed_out

log = logging.getLogger(__name__)
# What Litestar raises when the client goes away, or the server cuts it off, before its body has all come.
CLIENT_GONE = "client disconnected prematurely"
# What Litestar's multipart parser raises, as a 400, for a form of more parts than `multipart_form_part_limit`.
TOO_MANY_PARTS = "Request Entity Too Large"
ANSWERED_5XX = {HTTP_503_SERVICE_UNAVAILABLE, HTTP_504_GATEWAY_TIMEOUT, HTTP_507_INSUFFICIENT_STORAGE}

ERROR_TITLES = {
    400: "That did not work",
    403: "Not allowed",
    404: "Page not found",
    405: "Not allowed here",
    409: "Conflict",
    413: "Too large",
    415: "Unsupported file",
    429: "Too many attempts",
    500: "Something went wrong",
    503: "Temporarily unavailable",
    504: "Taking too long",
    507: "Storage full",
}
# Instead of a bare reason phrase ("Not Found"), a sentence; and never a server error's internals.
PLAIN_DETAILS = {
    403: "You are not allowed to see this page.",
    404: "There is nothing at this address: the link may be wrong, or the page has gone.",
    405: "This address does not take that kind of request.",
    413: "The upload is larger than this service accepts.",
    500: "Something broke on our side. It has been logged; please try again in a moment.",
}


class ErrorOut(msgspec.Struct):
    """The one shape of every error the JSON routes answer: the status again, a sentence for people, and for
    some errors what a program needs (`extra`): a quota's use and limit, the id of a prediction still being
    classified, the fields a request got wrong."""

    status_code: int
    detail: str
    extra: dict[str, Any] | list[Any] | msgspec.UnsetType = msgspec.UNSET


def plain_detail(status: int, detail: str) -> str:
    try:
        phrase = HTTPStatus(status).phrase.casefold()
    except ValueError:
        phrase = ""
    if status == HTTP_500_INTERNAL_SERVER_ERROR or detail.casefold() in {phrase, "internal server error"}:
        return PLAIN_DETAILS.get(status, detail)
    return detail


def named_problems(extra: Any) -> str:
    """The values a request got wrong and why, as Litestar's validation lists them in `extra` (the JSON's)."""
    items = extra if isinstance(extra, list) else []
    found = [
        f"{item['key']}: {item['message']}"
        for item in items
        if isinstance(item, dict) and {"key", "message"} <= item.keys()
    ]
    return "; ".join(found)


def form_route(request: AnyRequest) -> bool:
    """Whether the request's route takes a form, not an upload, as the route says (`opt`)."""
    handler = request.scope.get("route_handler")
    return bool(handler and handler.opt.get(FORM_ROUTE))


def error_page(request: AnyRequest, exc: Exception) -> Response[Any]:
    """Errors for people: sign in first for 401; a message for an HTMX swap; an error page otherwise."""
    status, detail, headers, extra = error_body(exc)
    if status == HTTP_401_UNAUTHORIZED:
        return signed_out(request, login_url(request))  # and drop a stale or revoked cookie
    if status == HTTP_413_REQUEST_ENTITY_TOO_LARGE and form_route(request):  # not "The upload is larger ..."
        detail = FORM_TOO_LARGE
    detail = plain_detail(status, detail)
    if problems := named_problems(extra):  # a page said "Validation failed for GET /history?page=0", not why
        detail = f"{detail}: {problems}"
    context = {"status_code": status, "title": ERROR_TITLES.get(status, "Error"), "detail": detail}
    if wants_partial(request):
        # Shown in the page's message area, whatever the request meant to swap.
        headers = {**headers, "HX-Retarget": "#messages", "HX-Reswap": "innerHTML"}
    return render(request, "errors/error.html", "errors/message.html", context, status_code=status, headers=headers)


def wants_json(request: Request[Any, Any, Any]) -> bool:
    path = request.url.path
    return (
        path.startswith(("/api", "/health", "/metrics", "/schema"))
        or "application/json" in request.headers.get("accept", "").split(",")[0]
    )


def error_body(exc: Exception) -> tuple[int, str, dict[str, str], Any]:
    """(status, detail, headers, extra) for any exception."""
    # Our own 503s, 504s and 507s say what to do; any other 5xx is a bug, whose detail may show internals.
    if isinstance(exc, HTTPException) and (exc.status_code < 500 or exc.status_code in ANSWERED_5XX):
        return exc.status_code, exc.detail, dict(exc.headers or {}), exc.extra
    if isinstance(exc, InternalServerException) and exc.detail == CLIENT_GONE:
        # The client's fault, not the server's (and nobody is there to read the answer): not logged as a bug.
        return HTTP_400_BAD_REQUEST, "The request body stopped before its end", {}, None
    if isinstance(exc, UnicodeError) or type(exc) is LookupError:
        # Litestar's multipart parser decodes a text part by the charset the part names (UTF-8 by default):
        # bytes it cannot decode, or a charset with no text codec (LookupError itself; a KeyError is a bug).
        # A file part named by `filename*=` alone (RFC 5987's, not a form's) is such a text part too.
        detail = (
            "The request body is malformed: a text field is not valid UTF-8 (or in the charset it names);"
            ' a file part needs a plain `filename="..."`'
        )
        return HTTP_400_BAD_REQUEST, detail, {}, None
    if redis_full(exc):
        log.warning("Redis is out of memory: %r", exc)
        detail = "The service is full for now (its queue has no memory left); try again later"
        return HTTP_503_SERVICE_UNAVAILABLE, detail, {"Retry-After": "30"}, None
    if database_busy(exc):
        log.warning("the database stayed locked: %r", exc)
        return (
            HTTP_503_SERVICE_UNAVAILABLE,
            "The database is busy just now; try again shortly",
            {"Retry-After": "5"},
            None,
        )
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


def json_error(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorOut]:
    status, detail, headers, extra = error_body(exc)
    body = ErrorOut(status, detail, extra or msgspec.UNSET)
    return Response(body, status_code=status, headers=headers, media_type=MediaType.JSON)


def too_many_parts(request: Request[Any, Any, Any], exc: Exception) -> Exception:
    """A form of too many parts as a 413 that says so: Litestar's 400 "Request Entity Too Large" told a
    folder of 10,010 photos neither the bound nor that it was one (10,005 got the collection's clear 413).
    Litestar says the same of a part whose header passes the parser's bounds (the error it replaces says
    which): that is a 400, said as such, not "more than 10008 parts" to one image of a long name."""
    if type(exc) is not ClientException or exc.status_code != HTTP_400_BAD_REQUEST or exc.detail != TOO_MANY_PARTS:
        return exc
    if "header" in str(exc.__context__):  # multipart's "Maximum segment header length (or count) exceeded"
        return ClientException(
            "A part of the form has too long a header (a file name or folder path over 4 kB) or too many headers"
        )
    most = request.app.multipart_form_part_limit
    return HTTPException(
        status_code=HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        detail=f"The form has more than {most} parts (files and fields), the most one request may have;"
        " send fewer files",
    )


def handle(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    exc = too_many_parts(request, exc)
    return json_error(request, exc) if wants_json(request) else error_page(request, exc)
