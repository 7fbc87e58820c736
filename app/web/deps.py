"""What handlers take from the connection: the process's services, the client's address, the signed-in
user, paging parameters, and the admin guard."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.exceptions import PermissionDeniedException
from litestar.handlers.base import BaseRouteHandler
from litestar.params import QueryParameter
from litestar.security.jwt import Token

from app.models import User
from app.services import Services

AnyRequest = Request[Any, Any, Any]
AuthedRequest = Request[User, Token, Any]
Page = Annotated[int, QueryParameter(ge=1, le=1_000_000, description="Page number, from 1")]
PerPage = Annotated[int, QueryParameter(ge=1, le=100, description="Items per page")]


def services(connection: ASGIConnection[Any, Any, Any, Any]) -> Services:
    found: Services = connection.app.state.services
    return found


def client_address(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    return connection.client.host if connection.client else "unknown"


def admin_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    if not connection.user.is_admin:
        raise PermissionDeniedException("Administrators only")
