"""Accounts: registration, sign-in with throttling, password hashing (argon2id), the admin bootstrap.
Used by the API and the pages."""

from __future__ import annotations

import asyncio
import re
import unicodedata
from typing import Annotated

import msgspec
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from litestar.exceptions import ClientException, NotAuthorizedException, TooManyRequestsException
from litestar.status_codes import HTTP_409_CONFLICT
from redis.asyncio import Redis
from tortoise.exceptions import IntegrityError

from app import keys, text
from app.models import User
from app.settings import Settings

# Domain labels exclude the dot, so matching is linear: no backtracking on hostile input. No control
# characters anywhere (NUL breaks PostgreSQL text).
EMAIL_PATTERN = r"^[^@\s\x00-\x1f\x7f]+@[^@\s.\x00-\x1f\x7f]+(?:\.[^@\s.\x00-\x1f\x7f]+)+$"
PASSWORD_MIN, PASSWORD_MAX = 8, 128

Email = Annotated[str, msgspec.Meta(pattern=EMAIL_PATTERN, max_length=254, examples=["ada@example.com"])]
NewPassword = Annotated[str, msgspec.Meta(min_length=PASSWORD_MIN, max_length=PASSWORD_MAX)]
Password = Annotated[str, msgspec.Meta(min_length=1, max_length=PASSWORD_MAX)]
NAME_MAX = 100
Name = Annotated[str, msgspec.Meta(max_length=NAME_MAX)]

BAD_CREDENTIALS = "Wrong email or password"

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
                # The window starts at the first failure (SET NX EX; INCR keeps the TTL). Redis 6.2 has
                # no EXPIRE ... NX, and the embedded default is 6.2.
                pipe.set(key, 0, ex=self.window, nx=True)
                pipe.incr(key)
            await pipe.execute()

    async def succeeded(self, email: str) -> None:
        await self.redis.delete(keys.login_throttle_account(email))


def normalize_email(email: str) -> str:
    """One spelling per address: compatibility forms folded (NFKC) and case folded."""
    return unicodedata.normalize("NFKC", email.strip()).casefold()


def normalize_name(name: str) -> str:
    return unicodedata.normalize("NFKC", name.strip())


def name_problem(name: str) -> str | None:
    if len(normalize_name(name)) > NAME_MAX:
        return f"The name must be at most {NAME_MAX} characters"
    return text.invisible_problem(name, "The name")


def email_problem(email: str) -> str | None:
    if len(email) > 254 or not re.match(EMAIL_PATTERN, email):
        return "Enter a valid email address"
    return None


def password_problem(password: str) -> str | None:
    if not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        return f"The password must be {PASSWORD_MIN} to {PASSWORD_MAX} characters long"
    return None


class EmailTaken(ClientException):
    status_code = HTTP_409_CONFLICT


async def register(email: str, password: str, name: str = "") -> User:
    """Create an account; 400 for a name that cannot be shown, EmailTaken (409) when the email is in use.
    The email and password are already validated."""
    if problem := name_problem(name):
        raise ClientException(problem)
    email, name = normalize_email(email), normalize_name(name)
    if await User.exists(email=email):
        raise EmailTaken("An account with this email already exists")
    try:
        return await User.create(email=email, name=name, password_hash=await hash_password(password))
    except IntegrityError as exc:  # a concurrent registration won the race
        raise EmailTaken("An account with this email already exists") from exc


async def authenticate(email: str, password: str, address: str, throttle: LoginThrottle) -> User:
    """The user for these credentials; the same 401 for an unknown email and a wrong password."""
    email = normalize_email(email)
    await throttle.check(email, address)
    user = await User.get_or_none(email=email)
    if user is None:
        await hash_password(password)  # spend the same time as a real check: no user enumeration
        ok, new_hash = False, None
    else:
        ok, new_hash = await verify_password(user.password_hash, password)
    if not ok or user is None:
        await throttle.failed(email, address)
        raise NotAuthorizedException(BAD_CREDENTIALS)
    await throttle.succeeded(email)
    if new_hash:
        user.password_hash = new_hash
        await user.save(update_fields=["password_hash"])
    return user


async def ensure_admin(settings: Settings) -> User:
    """The admin account from settings exists and is an admin (its password is set on creation only)."""
    user = await User.get_or_none(email=settings.admin_email)
    if user is None:
        try:
            return await User.create(
                email=settings.admin_email,
                name="Administrator",
                password_hash=await hash_password(settings.admin_password),
                is_admin=True,
            )
        except IntegrityError:  # another web process starting at the same time made it first
            user = await User.get(email=settings.admin_email)
    if not user.is_admin:
        user.is_admin = True
        await user.save(update_fields=["is_admin"])
    return user
