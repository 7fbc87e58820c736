"""What handlers take from the connection: the process's services, the client's address, the signed-in
user, paging parameters, and the admin guard."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar
from uuid import UUID

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.exceptions import (
    ClientException,
    NotAuthorizedException,
    NotFoundException,
    PermissionDeniedException,
)
from litestar.handlers.base import BaseRouteHandler
from litestar.params import QueryParameter
from litestar.security.jwt import Token
from litestar.types import Scope
from tortoise.expressions import Q
from tortoise.models import Model
from tortoise.queryset import QuerySet

from app.models import User
from app.services import Services

AnyRequest = Request[Any, Any, Any]
AuthedRequest = Request[User, Token, Any]
Page = Annotated[int, QueryParameter(ge=1, le=1_000_000, description="Page number, from 1")]
PerPage = Annotated[int, QueryParameter(ge=1, le=100, description="Items per page")]
BEFORE = (
    "The id of an item of this list (a page's `next_before`): the list is then the items after it, and `page`,"
    " `total` and `more` count from it"
)
Before = Annotated[UUID | None, QueryParameter(description=BEFORE)]
BeforeNumber = Annotated[int | None, QueryParameter(ge=1, le=2**31 - 1, description=BEFORE)]  # an INTEGER id
Row = TypeVar("Row", bound=Model)


# The items a list reaches back: a page's OFFSET walks every item before it and its count every item. With a
# million predictions, one person's history page cost PostgreSQL 66 ms to count and its last one 290 ms to
# reach (measured), and one sender may hold 32 requests at once. Past the window a page is refused (400)
# and the count stops (`more`), as search engines bound theirs; `before` goes on from an item, by an index.
LIST_WINDOW = 10_000
LIST_DESCRIPTION = (
    f"Pages reach back {LIST_WINDOW:,} items (`total` stops there, with `more` true; a page past them is 400)."
    " Each page's `next_before` goes on from its last item, as far back as the list goes: ask for"
    " `before=<next_before>` (an id not in the list is 404), where `page` counts from that item."
)


@dataclass(frozen=True)
class Pager:
    number: int
    per_page: int
    total: int  # exact, up to the window
    more: bool = False  # more items than `total`, past the window
    next_before: Any = None  # the id of the page's last item when more items follow it: `before` for the next

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.per_page))


async def after_item(query: QuerySet[Row], by: str, before: Any) -> QuerySet[Row]:
    """The items of `query` that come after the item `before` (its id), found by a WHERE on the list's order, not
    an OFFSET: `query` is ordered by `by`, then its primary key, both descending (ties on `by` by the key, so
    that none is repeated or skipped), and an index on (..., by, key) serves it. 404 for an id not in the list
    (another person's, or gone)."""
    found = await query.filter(pk=before).values_list(by, flat=True)
    if not found:
        raise NotFoundException(f"No item {before} in this list: `before` takes the id of one of its items")
    at: Any = found[0]  # the item's `by`
    key = query.model._meta.pk_attr
    # `by <= at` bounds the index range; the OR, on those rows only, steps past the ties before the item.
    return query.filter(**{f"{by}__lte": at}).filter(Q(**{f"{by}__lt": at}) | Q(**{f"{key}__lt": before}))


async def paginate(
    query: QuerySet[Row], number: int, per_page: int, bounded: bool = True, before: Any = None, by: str = ""
) -> tuple[list[Row], Pager]:
    """Page `number` of an ordered query, and where it stands among the pages of its first LIST_WINDOW items
    (for the API and the pages). `bounded=False` for a query that bounds itself (a collection's items). With
    `before` (an item's id, the list ordered by `by` as `after_item` says), the list is the items after that
    one: its pages, count and window count from there, so every item is in reach however many come before."""
    if before is not None:
        query = await after_item(query, by, before)
    offset = (number - 1) * per_page
    if not bounded:
        total, more = await query.count(), False
    elif offset >= LIST_WINDOW:
        raise ClientException(
            f"Lists reach back {LIST_WINDOW:,} items: page {number}, {per_page} a page, starts past them;"
            " go on with `before`, the id of the last item you have"
        )
    else:
        more = bool(await query.offset(LIST_WINDOW).limit(1).values_list(query.model._meta.pk_attr, flat=True))
        total = LIST_WINDOW if more else await query.count()
    rows = await query.offset(offset).limit(per_page + 1)  # one more: whether another page follows
    items = rows[:per_page]
    next_before = items[-1].pk if len(rows) > per_page else None
    return items, Pager(number, per_page, total, more, next_before)


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
    # OPTIONS skips authentication, so no one is signed in: its answer is the Allow header, nothing to guard, and
    # a 401 here made the page sign the person out (clearing their cookies).
    if connection.scope.get("method") == "OPTIONS":
        return
    user = connection.scope.get("user")
    if not isinstance(user, User):
        raise NotAuthorizedException("Sign in first")
    if not user.is_admin:
        raise PermissionDeniedException("Administrators only")
