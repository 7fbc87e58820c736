"""What handlers take from the connection: the process's services, the client's address, the signed-in
user, paging parameters, and the admin guard."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.exceptions import ClientException, NotAuthorizedException, PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.params import QueryParameter
from litestar.security.jwt import Token
from litestar.types import Scope
from tortoise.models import Model
from tortoise.queryset import QuerySet

from app.models import User
from app.services import Services

AnyRequest = Request[Any, Any, Any]
AuthedRequest = Request[User, Token, Any]
Page = Annotated[int, QueryParameter(ge=1, le=1_000_000, description="Page number, from 1")]
PerPage = Annotated[int, QueryParameter(ge=1, le=100, description="Items per page")]
Row = TypeVar("Row", bound=Model)


# The items a list reaches back: a page's OFFSET walks every item before it and its count every item. With a
# million predictions, one person's history page cost PostgreSQL 66 ms to count and its last one 290 ms to
# reach (measured), and one sender may hold 32 requests at once. Past the window a page is refused (400)
# and the count stops (`more`), as search engines bound theirs.
LIST_WINDOW = 10_000


@dataclass(frozen=True)
class Pager:
    number: int
    per_page: int
    total: int  # exact, up to the window
    more: bool = False  # more items than `total`, past the window

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.per_page))

    @property
    def offset(self) -> int:
        return (self.number - 1) * self.per_page


async def paginate(query: QuerySet[Row], number: int, per_page: int, bounded: bool = True) -> tuple[list[Row], Pager]:
    """Page `number` of an ordered query, and where it stands among the pages of its first LIST_WINDOW items
    (for the API and the pages). `bounded=False` for a query that bounds itself (a collection's items)."""
    if not bounded:
        total, more = await query.count(), False
    elif (number - 1) * per_page >= LIST_WINDOW:
        raise ClientException(
            f"Lists reach back {LIST_WINDOW:,} items: page {number}, {per_page} a page, starts past them"
        )
    else:
        more = bool(await query.offset(LIST_WINDOW).limit(1).values_list(query.model._meta.pk_attr, flat=True))
        total = LIST_WINDOW if more else await query.count()
    pager = Pager(number, per_page, total, more)
    return await query.offset(pager.offset).limit(per_page), pager


def services(connection: ASGIConnection[Any, Any, Any, Any]) -> Services:
    found: Services = connection.app.state.services
    return found


def address_of(scope: Scope) -> str:
    """The address a request comes from; behind a proxy, the proxy's."""
    client = scope.get("client")
    return client[0] if client else "unknown"


def client_address(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    return address_of(connection.scope)


def admin_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    # Read from the scope: requests that skip authentication (OPTIONS) have no user at all.
    user = connection.scope.get("user")
    if not isinstance(user, User):
        raise NotAuthorizedException("Sign in first")
    if not user.is_admin:
        raise PermissionDeniedException("Administrators only")
