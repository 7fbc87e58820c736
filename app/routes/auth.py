"""JSON API for accounts: register, log in, log out, the current user."""

from __future__ import annotations

import time
from typing import Any
from uuid import uuid4

import msgspec
from litestar import Request, Response, get, post
from litestar.params import JSONBody
from litestar.security.jwt import JWTCookieAuth, Token
from litestar.status_codes import HTTP_200_OK

from app import accounts, keys
from app.accounts import Email, Name, NewPassword, Password
from app.models import User
from app.services import client_address, services


class RegisterIn(msgspec.Struct, forbid_unknown_fields=True):
    email: Email
    password: NewPassword
    name: Name = ""


class LoginIn(msgspec.Struct, forbid_unknown_fields=True):
    email: Email
    password: Password


class UserOut(msgspec.Struct):
    id: int
    email: str
    name: str
    is_admin: bool
    created_at: str

    @classmethod
    def of(cls, user: User) -> UserOut:
        return cls(user.id, user.email, user.name, user.is_admin, user.created_at.isoformat())


class TokenOut(msgspec.Struct):
    access_token: str
    token_type: str
    expires_in: int


def jwt_auth(request: Request[Any, Any, Any]) -> JWTCookieAuth[User, Token]:
    found: JWTCookieAuth[User, Token] = request.app.state.jwt_auth
    return found


def issue_token(request: Request[Any, Any, Any], user: User) -> str:
    # A jti on every token lets logout revoke exactly that token.
    return jwt_auth(request).create_token(identifier=str(user.id), token_unique_jwt_id=uuid4().hex)


async def revoke(request: Request[Any, Any, Any], token: Token) -> None:
    # Remember the revocation only as long as the token would have lived.
    ttl = max(1, int(token.exp.timestamp() - time.time()))
    if isinstance(token.jti, str):
        await services(request).redis.set(keys.revoked_token(token.jti), "1", ex=ttl)


async def is_revoked(token: Token, connection: Any) -> bool:
    if not isinstance(token.jti, str):
        return False
    return bool(await services(connection).redis.exists(keys.revoked_token(token.jti)))


@post("/api/auth/register", tags=["auth"], summary="Create an account")
async def register(data: JSONBody[RegisterIn]) -> UserOut:
    return UserOut.of(await accounts.register(data.email, data.password, data.name))


@post(
    "/api/auth/login",
    tags=["auth"],
    summary="Exchange email and password for a bearer token",
    status_code=HTTP_200_OK,
)
async def login(request: Request[Any, Any, Any], data: JSONBody[LoginIn]) -> TokenOut:
    svc = services(request)
    user = await accounts.authenticate(data.email, data.password, client_address(request), svc.throttle)
    return TokenOut(issue_token(request, user), "bearer", svc.settings.token_minutes * 60)


@post("/api/auth/logout", tags=["auth"], summary="Revoke the bearer token", status_code=HTTP_200_OK)
async def logout(request: Request[User, Token, Any]) -> Response[dict[str, str]]:
    await revoke(request, request.auth)
    return Response({"detail": "Signed out"})


@get("/api/users/me", tags=["auth"], summary="The signed-in user")
async def me(request: Request[User, Token, Any]) -> UserOut:
    return UserOut.of(request.user)


routes = [register, login, logout, me]
