"""Passwords (argon2id), JWTs (Litestar's JWT auth with pyjwt), guards and login throttling."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException, TooManyRequestsException
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware.authentication import AuthenticationResult
from litestar.security.jwt import JWTCookieAuth, JWTCookieAuthenticationMiddleware, Token
from redis.asyncio import Redis

from app import keys
from app.models import User
from app.settings import Settings

JWT_ALGORITHM = "HS256"
AUTH_COOKIE = "token"
# Routes anyone may reach; everything else needs a signed-in user.
PUBLIC_PATHS = [
    "^/api/auth/(register|login)$",
    "^/api/labels",
    "^/health",
    "^/metrics",
    "^/schema",
    "^/static",
    "^/login",
    "^/register",
    "^/favicon",
]

_hasher = PasswordHasher()  # argon2id with argon2-cffi's current recommended parameters


async def hash_password(password: str) -> str:
    # Hashing costs tens of milliseconds of CPU: keep it off the event loop.
    return await asyncio.to_thread(_hasher.hash, password)


async def verify_password(password_hash: str, password: str) -> tuple[bool, str | None]:
    """Whether the password matches, and a new hash when the parameters changed since it was made."""

    def check() -> tuple[bool, str | None]:
        try:
            _hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False, None
        return True, _hasher.hash(password) if _hasher.check_needs_rehash(password_hash) else None

    return await asyncio.to_thread(check)


async def retrieve_user(token: Token, _connection: ASGIConnection[Any, Any, Any, Any]) -> User | None:
    try:
        user_id = int(token.sub)
    except ValueError:
        return None
    return await User.get_or_none(id=user_id)


class AuthMiddleware(JWTCookieAuthenticationMiddleware):
    """The JSON API takes only the bearer header: a cookie there would bypass CSRF protection."""

    async def authenticate_request(self, connection: ASGIConnection[Any, Any, Any, Any]) -> AuthenticationResult:
        if connection.scope["path"].startswith("/api"):
            header = connection.headers.get(self.auth_header, "")
            scheme, _, encoded = header.partition(" ")
            if scheme.lower() != "bearer" or not encoded:
                raise NotAuthorizedException("Sign in: send 'Authorization: Bearer <token>'")
            return await self.authenticate_token(encoded_token=encoded, connection=connection)
        return await super().authenticate_request(connection)


def build_jwt_auth(settings: Settings) -> JWTCookieAuth[User, Token]:
    return JWTCookieAuth[User, Token](
        retrieve_user_handler=retrieve_user,
        token_secret=settings.secret_key,
        algorithm=JWT_ALGORITHM,
        require_claims=["exp", "sub"],
        default_token_expiration=timedelta(minutes=settings.token_minutes),
        key=AUTH_COOKIE,
        samesite="lax",
        secure=settings.production,
        exclude=PUBLIC_PATHS,
        authentication_middleware_class=AuthMiddleware,
    )


def admin_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    if not connection.user.is_admin:
        raise PermissionDeniedException("Administrators only")


class LoginThrottle:
    """Counts failed logins per account and per client address in Redis; past the limit, 429."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.window = settings.login_window_seconds
        self.limits = {
            "account": settings.login_attempts_per_account,
            "address": settings.login_attempts_per_address,
        }

    def _keys(self, email: str, address: str) -> dict[str, str]:
        return {
            "account": keys.login_throttle_account(email),
            "address": keys.login_throttle_address(address),
        }

    async def check(self, email: str, address: str) -> None:
        names = self._keys(email, address)
        counts = await self.redis.mget(list(names.values()))
        for (kind, key), count in zip(names.items(), counts, strict=True):
            if count is not None and int(count) >= self.limits[kind]:
                retry = max(int(await self.redis.ttl(key)), 1)
                raise TooManyRequestsException(
                    f"Too many failed sign-ins; try again in {retry} seconds",
                    headers={"Retry-After": str(retry)},
                )

    async def failed(self, email: str, address: str) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            for key in self._keys(email, address).values():
                pipe.incr(key)
                pipe.expire(key, self.window, nx=True)
            await pipe.execute()

    async def succeeded(self, email: str) -> None:
        await self.redis.delete(keys.login_throttle_account(email))
