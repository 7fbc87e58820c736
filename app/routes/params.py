"""Parameters shared by the JSON routes and the pages."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request
from litestar.params import QueryParameter
from litestar.security.jwt import Token

from app.models import User

Page = Annotated[int, QueryParameter(ge=1, le=1_000_000, description="Page number, from 1")]
PerPage = Annotated[int, QueryParameter(ge=1, le=100, description="Items per page")]
AuthedRequest = Request[User, Token, Any]
