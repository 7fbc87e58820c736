"""One value for a query parameter that takes one: `?page=1&page=2` is a 400 naming `page`, for every route.
Litestar took one of the values and said nothing (`per_page=10&per_page=100000` answered 10 a page), so the
client could not tell which it got. A parameter a route takes as a list still takes repeats."""

from __future__ import annotations

from typing import Any

from litestar.exceptions import ValidationException
from litestar.handlers import HTTPRouteHandler
from litestar.plugins import ReceiveRoutePlugin
from litestar.routes import BaseRoute, HTTPRoute

from app.web.deps import AnyRequest

# The route handler's `opt` key for the query parameters it takes one value of (their names in the address).
ONE_VALUE = "one_value_queries"
REPEATED = "given more than once (it takes one value)"


def one_value_queries(handler: HTTPRouteHandler, route: HTTPRoute) -> frozenset[str]:
    """The names of the query parameters `handler` (its signature and its dependencies') takes as one value:
    all but those Litestar itself parses as lists."""
    _, model = route.route_handler_map[next(iter(handler.http_methods))]
    return frozenset(p.field_alias for p in model.expected_query_params) - set(model.sequence_query_parameter_names)


class OneValueQueries(ReceiveRoutePlugin):
    """Notes on each route handler, as the app registers it, the query parameters it takes one value of, from
    the parameter model Litestar made of it (so the names and list types are Litestar's own)."""

    def receive_route(self, route: BaseRoute) -> None:
        if isinstance(route, HTTPRoute):
            for handler in route.route_handlers:
                handler.opt[ONE_VALUE] = one_value_queries(handler, route)


def refuse_repeats(request: AnyRequest) -> None:
    """400, naming them, for the one-value query parameters the request gives more than once."""
    names: frozenset[str] = request.route_handler.opt.get(ONE_VALUE, frozenset())
    if not names or not request.scope.get("query_string"):
        return
    query = request.query_params
    repeated = sorted(name for name in names if len(query.getall(name, [])) > 1)
    if repeated:
        # As Litestar's own validation says it: the JSON's `extra` and an error page (app/web/errors.py) name each.
        problems: list[dict[str, Any]] = [{"message": REPEATED, "key": name, "source": "query"} for name in repeated]
        address = f"{request.url.path}?{request.url.query}"
        raise ValidationException(detail=f"Validation failed for {request.method} {address}", extra=problems)
