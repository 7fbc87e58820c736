"""Accounts: registration, sign-in with throttling, password hashing (argon2id), the admin bootstrap.
Used by the API and the pages."""

from __future__ import annotations

import contextlib
import logging
import re
import unicodedata
from typing import Annotated

import msgspec
from litestar.exceptions import ClientException, NotAuthorizedException
from litestar.status_codes import HTTP_409_CONFLICT
from tortoise.exceptions import IntegrityError

from app import passwords, text
from app.models import User
from app.passwords import PASSWORD_MAX, PASSWORD_MIN
from app.settings import Settings
from app.throttles import Throttle

# Domain labels exclude the dot, so matching is linear: no backtracking on hostile input. No control
# characters anywhere (NUL breaks PostgreSQL text).
EMAIL_PATTERN = r"^[^@\s\x00-\x1f\x7f]+@[^@\s.\x00-\x1f\x7f]+(?:\.[^@\s.\x00-\x1f\x7f]+)+$"

EMAIL_MAX = 254  # characters, once normalised (User.email's column)
Email = Annotated[str, msgspec.Meta(pattern=EMAIL_PATTERN, max_length=EMAIL_MAX, examples=["ada@example.com"])]
# Sign-in's: only the column's bound (judged again once normalised), no pattern: accounts made before a
# check was added (control characters in 0396e8f, invisible ones in 4d2990b) must still sign in.
SignInEmail = Annotated[str, msgspec.Meta(max_length=EMAIL_MAX, examples=["ada@example.com"])]
NewPassword = Annotated[str, msgspec.Meta(min_length=PASSWORD_MIN, max_length=PASSWORD_MAX)]
Password = Annotated[str, msgspec.Meta(min_length=1, max_length=PASSWORD_MAX)]
NAME_MAX = 100
Name = Annotated[str, msgspec.Meta(max_length=NAME_MAX)]

BAD_CREDENTIALS = "Wrong email or password"
log = logging.getLogger(__name__)


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
    """Judged as it is stored: normalised, which may lengthen it (one character to 18) or change its shape.
    No invisible characters or direction marks: the admin pages and every page's header show it."""
    email = normalize_email(email)
    if len(email) > EMAIL_MAX or not re.match(EMAIL_PATTERN, email) or text.invisible_problem(email, "The email"):
        return "Enter a valid email address"
    return None


def sign_in_problem(email: str) -> str | None:
    """Why no account can have this email, judged as sign-in looks it up (normalised): longer than the column
    (it would name kB-long throttle keys), no @, or a NUL, which PostgreSQL text cannot hold (the lookup
    failed, 500). Nothing stricter: `email_problem`'s other checks came after some accounts were made."""
    email = normalize_email(email)
    if len(email) > EMAIL_MAX or "@" not in email or "\x00" in email:
        return "Enter a valid email address"
    return None


def password_problem(password: str) -> str | None:
    if not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        return f"The password must be {PASSWORD_MIN} to {PASSWORD_MAX} characters long"
    return None


class EmailTaken(ClientException):
    status_code = HTTP_409_CONFLICT


async def register(email: str, password: str, name: str, address: str, throttle: Throttle) -> User:
    """Create an account; 400 for an email that is not one once normalised or a name that cannot be shown,
    EmailTaken (409) when the email is in use, 429 past REGISTRATIONS_PER_ADDRESS (every attempt counts: a
    409 tells whether an email is taken).
    The password is already validated."""
    if problem := email_problem(email) or name_problem(name):
        raise ClientException(problem)
    limit = throttle.sign_up_limit(address)
    await throttle.take([limit])
    email, name = normalize_email(email), normalize_name(name)
    if await User.exists(email=email):
        raise EmailTaken("An account with this email already exists")
    try:
        return await User.create(email=email, name=name, password_hash=await passwords.hash_password(password))
    except IntegrityError as exc:  # a concurrent registration won the race
        raise EmailTaken("An account with this email already exists") from exc


async def authenticate(email: str, password: str, address: str, throttle: Throttle) -> User:
    """The user for these credentials; the same 401, after the same work, for an unknown email and a wrong
    password; 429 past the failed sign-in limits, or past the account's sign-ins of any outcome from this
    address (app/throttles.py sign_in_limits). 400 for an email no account can have (`sign_in_problem`), before
    anything is counted: one that normalising lengthened past EMAIL_MAX (U+FDFA is 18 characters) was named in
    8 kB throttle keys, then refused by the database (500), which gave the attempt back: Redis grew with every
    request, uncounted."""
    if problem := sign_in_problem(email):
        raise ClientException(problem)
    email = normalize_email(email)
    limits = throttle.sign_in_limits(email, address)
    attempt = await throttle.take(limits)  # in flight, filling the limits of failures as one would, till judged
    try:
        user, new_hash = await _verified(email, password)
    except NotAuthorizedException:
        await throttle.settle(limits, attempt, failed=True)
        raise
    except BaseException:  # not the password's failure (the database away, the client gone): not counted
        with contextlib.suppress(Exception):
            await throttle.settle(limits, attempt, failed=False)
        raise
    await throttle.settle(limits, attempt, failed=False)
    # A success clears its address's failures here. Not account-wide: each sign-in of the owner would give
    # anyone guessing from many addresses a fresh allowance.
    await throttle.forget(limits.failed_by_account_address)
    if new_hash:
        user.password_hash = new_hash
        await user.save(update_fields=["password_hash"])
    return user


async def _verified(email: str, password: str) -> tuple[User, str | None]:
    """The user for these credentials, and their password's new hash if it needs one; 401 otherwise."""
    user = await User.get_or_none(email=email)
    if user is None:
        await passwords.verify_nobody(password)  # no user enumeration by timing
        raise NotAuthorizedException(BAD_CREDENTIALS)
    ok, new_hash = await passwords.verify_password(user.password_hash, password)
    if not ok:
        raise NotAuthorizedException(BAD_CREDENTIALS)
    return user, new_hash


async def ensure_admin(settings: Settings) -> User:
    """The admin account from settings exists and is an admin (its password is set on creation only); an
    account that already had the email is made admin only if its password is ADMIN_PASSWORD."""
    email = normalize_email(settings.admin_email)  # as sign-in looks it up
    user = await User.get_or_none(email=email)
    if user is None:
        try:
            return await User.create(
                email=email,
                name="Administrator",
                password_hash=await passwords.hash_password(settings.admin_password),
                is_admin=True,
            )
        except IntegrityError:  # another web process starting at the same time made it first
            user = await User.get(email=email)
    if user.is_admin:
        return user
    # Sign-up is open and unverified: an account someone else registered under this email first would
    # otherwise become admin with their password. Only ADMIN_PASSWORD shows the account is the operator's.
    # Not a refusal to start: anyone could then stop the service by signing up with the admin's email.
    if not (await passwords.verify_password(user.password_hash, settings.admin_password))[0]:
        log.error(
            "ADMIN_EMAIL %s names an existing account whose password is not ADMIN_PASSWORD: it is not made admin"
            " (delete or rename that account, or set ADMIN_EMAIL to another email)",
            email,
        )
        return user
    user.is_admin = True
    await user.save(update_fields=["is_admin"])
    return user
