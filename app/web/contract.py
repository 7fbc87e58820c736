"""The API's contract, as /schema documents it: every error a route can answer, in the one shape of
app/web/errors.py (the `ErrorOut` component) with the headers that come with it, and the bearer scheme (the
lock) on exactly the routes that need a token; and operation ids a generated client reads well.

A route lists the errors its own code raises (`responses=errors(409, 429)`); `ApiContract` adds, when the
app registers the route, the ones that follow from what the route is, so they are written once:

- every route: 400 (a malformed request or field; control characters in the address, app/web/limits.py),
  414 (too long an address) and 431 (too many or too large headers); 429 but on the probes (a sender with as
  many requests open as it may);
- a route that takes a body: 413 past the body limit;
- a route with path parameters: 404 (no such object, not the caller's, or an id of the wrong form);
- a route that needs a token: 401, and 503 when the database or Redis behind the sign-in is down.

A route needs a token unless the JWT auth config excludes its path or the route opts out
(app/web/sessions.py), exactly as the auth middleware decides.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from litestar.config.app import AppConfig
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import (
    Components,
    OpenAPIHeader,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Reference,
    Schema,
    SecurityScheme,
)
from litestar.plugins import InitPlugin, ReceiveRoutePlugin
from litestar.routes import BaseRoute, HTTPRoute
from litestar.security.jwt import JWTCookieAuth

from app.images import ACCEPTED
from app.web.errors import ErrorOut
from app.web.limits import UNCOUNTED

ERROR_DESCRIPTIONS = {
    400: "Bad input: a malformed body, field or image, a query parameter given more than once, or control"
    " characters in the address",
    401: "No valid bearer token; signing in: wrong email or password",
    404: "No such object, or not yours",
    409: "Conflict: the email is taken, or the prediction is not finished yet",
    413: "Too large: the body, the image or the collection, or past your storage quota (`extra` has the numbers)",
    414: "The address (path and query) is too long",
    415: f"Not a supported image: send {ACCEPTED}; or a collection's `archive` that is no zip",
    429: "Too many sign-ins or sign-ups from here, failed sign-ins to the account from everywhere, too much sent"
    " at once, or past a quota (`extra` has the numbers): see `Retry-After`",
    431: "Too many or too large headers",
    503: "No worker yet, the queue is full, the server holds as many uploads as it can, or a service this"
    " depends on is down; retry after `Retry-After`",
    504: "No result within the wait timeout: fetch the prediction later from `Location` (its id is in `extra`)",
    507: "The image store is full until an administrator frees space, or nearly full and you store an equal"
    " share of it or more (`extra` has the numbers)",
}
RETRY_AFTER = "Retry-After"
LOCATION = "Location"
HEADERS = {
    RETRY_AFTER: OpenAPIHeader(
        schema=Schema(type=OpenAPIType.INTEGER, minimum=1), required=True, description="Seconds to wait first"
    ),
    LOCATION: OpenAPIHeader(
        schema=Schema(type=OpenAPIType.STRING), required=True, description="Where to fetch the result later"
    ),
}
# The headers each status always comes with, whatever the route: when to try again, where the work is.
HEADERS_BY_STATUS = {"202": [LOCATION], "429": [RETRY_AFTER], "503": [RETRY_AFTER], "504": [LOCATION]}
BEARER = SecurityScheme(
    type="http",
    scheme="bearer",
    bearer_format="JWT",
    description="The `access_token` of `POST /api/auth/login`, sent as `Authorization: Bearer <token>`",
)


def errors(*statuses: int) -> dict[int, ResponseSpec]:
    """The `responses=` of a route that can answer these error statuses, each in the one error shape."""
    return {
        status: ResponseSpec(ErrorOut, description=ERROR_DESCRIPTIONS[status], generate_examples=False)
        for status in statuses
    }


@dataclass
class DocumentedOperation(Operation):
    """An operation whose responses name the headers their status comes with (Litestar's ResponseSpec has no
    headers; a custom operation class is its way to add to the generated operation)."""

    def __post_init__(self) -> None:
        for status, names in HEADERS_BY_STATUS.items():
            response = (self.responses or {}).get(status)
            if isinstance(response, OpenAPIResponse):
                refs = {name: Reference(f"#/components/headers/{name}") for name in names}
                response.headers = {**(response.headers or {}), **refs}


def operation_id(handler: HTTPRouteHandler, _method: Any, _path: Any) -> str:
    """The operation's id: its handler's name, which a generated client names its function after
    (`create_prediction`, `login`); Litestar makes sure no two are the same."""
    return handler.handler_name.removeprefix("api_")


def needs_token(auth: JWTCookieAuth[Any, Any], path: str, handler: HTTPRouteHandler) -> bool:
    """Whether the auth middleware asks this route for a token: not if the route opts out, nor if one of the
    config's excluded path patterns matches."""
    if handler.opt.get(auth.exclude_opt_key):
        return False
    excluded = [auth.exclude] if isinstance(auth.exclude, str) else auth.exclude or []
    return not any(re.search(pattern, path) for pattern in excluded)


class ApiContract(InitPlugin, ReceiveRoutePlugin):
    """Documents the errors and the security of every route in the schema, as the module docstring says."""

    def __init__(self, auth: JWTCookieAuth[Any, Any]) -> None:
        self.auth = auth

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        config = app_config.openapi_config
        if config is not None:
            config.operation_id_creator = operation_id
            config.security = None  # the auth config put the lock on every operation: per route instead
            components = config.components if isinstance(config.components, list) else [config.components]
            # After the auth config's own scheme, which it describes as a cookie: the API takes the header.
            scheme: dict[str, SecurityScheme | Reference] = {self.auth.openapi_security_scheme_name: BEARER}
            config.components = [*components, Components(headers=dict(HEADERS), security_schemes=scheme)]
        return app_config

    def receive_route(self, route: BaseRoute) -> None:
        if not isinstance(route, HTTPRoute):
            return
        for handler in route.route_handlers:
            if not handler.resolve_include_in_schema():
                continue
            statuses = [400, 414, 431]
            if not route.path.startswith(UNCOUNTED):
                statuses.append(429)
            if route.path_parameters:
                statuses.append(404)
            if "data" in handler.parsed_fn_signature.parameters:
                statuses.append(413)
            secured = needs_token(self.auth, route.path, handler)
            if secured:
                statuses += [401, 503]
            handler.responses = errors(*statuses) | dict(handler.responses or {})
            handler.security = [self.auth.security_requirement] if secured else None
            if handler.operation_class is Operation:
                handler.operation_class = DocumentedOperation
