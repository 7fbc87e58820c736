"""Password hashing (argon2id) on thread pools of its own, so a burst of sign-ups or sign-ins cannot take
the threads that uploads and files use, and sign-ins do not queue behind sign-ups."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

PASSWORD_MIN, PASSWORD_MAX = 8, 128  # characters: what sign-up takes, and sign-in (ADMIN_PASSWORD too)
# argon2 releases the GIL while it hashes: each thread is up to one busy core, tens of ms per password.
SIGN_IN_THREADS = 2
NEW_PASSWORD_THREADS = 1

_hasher = PasswordHasher()  # argon2id with argon2-cffi's current recommended parameters
_sign_in = ThreadPoolExecutor(SIGN_IN_THREADS, thread_name_prefix="sign-in")
_new_passwords = ThreadPoolExecutor(NEW_PASSWORD_THREADS, thread_name_prefix="new-password")


async def hash_password(password: str) -> str:
    """The hash of a new password (sign-up, the admin bootstrap), on the new passwords' own thread."""
    return await asyncio.get_running_loop().run_in_executor(_new_passwords, _hasher.hash, password)


def _check(password_hash: str, password: str) -> tuple[bool, str | None]:
    try:
        _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False, None
    return True, _hasher.hash(password) if _hasher.check_needs_rehash(password_hash) else None


async def verify_password(password_hash: str, password: str) -> tuple[bool, str | None]:
    """Whether the password matches, and a new hash when the parameters changed since it was made."""
    return await asyncio.get_running_loop().run_in_executor(_sign_in, _check, password_hash, password)


@cache
def _dummy_hash() -> str:
    return _hasher.hash("the hash an unknown email is checked against")


async def verify_nobody(password: str) -> None:
    """The same work as checking a real account's password: an unknown email takes as long as a known one."""
    await verify_password(_dummy_hash(), password)


async def warm_up() -> None:
    """Make the dummy hash at start-up, not on the first unknown email (that one would take twice as long)."""
    await asyncio.get_running_loop().run_in_executor(_new_passwords, _dummy_hash)
