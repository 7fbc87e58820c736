"""JSON API for accounts: register, log in, log out, the current user."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, get, post
from litestar.params import JSONBody
from litestar.security.jwt import Token
from litestar.status_codes import HTTP_200_OK

from app import accounts
from app.accounts import Email, Name, NewPassword, Password, SignInEmail
from app.models import User
from app.web.api.schemas import SignedOut, TokenOut, UserOut
from app.web.contract import errors
from app.web.deps import client_address, services
from app.web.sessions import issue_token, revoke


class RegisterIn(msgspec.Struct, forbid_unknown_fields=True):
    email: Email
    password: NewPassword
    name: Name = ""


class LoginIn(msgspec.Struct, forbid_unknown_fields=True):
    email: SignInEmail
    password: Password


@post("/api/auth/register", tags=["auth"], summary="Create an account", responses=errors(409, 429, 503))
async def api_register(request: Request[Any, Any, Any], data: JSONBody[RegisterIn]) -> UserOut:
    throttle = services(request).throttle
    return UserOut.of(await accounts.register(data.email, data.password, data.name, client_address(request), throttle))


@post(
    "/api/auth/login",
    tags=["auth"],
    summary="Exchange email and password for a bearer token",
    status_code=HTTP_200_OK,
    responses=errors(401, 429, 503),
)
async def login(request: Request[Any, Any, Any], data: JSONBody[LoginIn]) -> TokenOut:
    svc = services(request)
    user = await accounts.authenticate(data.email, data.password, client_address(request), svc.throttle)
    return TokenOut(issue_token(request, user), "bearer", svc.settings.token_minutes * 60)


@post("/api/auth/logout", tags=["auth"], summary="Revoke the bearer token", status_code=HTTP_200_OK)
async def api_logout(request: Request[User, Token, Any]) -> SignedOut:
    await revoke(request, request.auth)
    return SignedOut("Signed out")


@get("/api/users/me", tags=["auth"], summary="The signed-in user")
async def me(request: Request[User, Token, Any]) -> UserOut:
    return UserOut.of(request.user)


routes = [api_register, login, api_logout, me]
