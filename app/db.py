"""Tortoise ORM configuration, shared by the web app, the worker and the `tortoise` CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tortoise import Tortoise
from tortoise.backends.base.config_generator import expand_db_url
from tortoise.context import TortoiseContext
from tortoise.migrations.api.migrate import migrate

from app import db_turns
from app.settings import get_settings

# SQLite runs in WAL mode (Tortoise's default); with synchronous=NORMAL a commit no longer waits for the disk
# (fdatasync), which halved an upload's INSERT: 1.26 -> 0.60 ms of CPU and 3.4 -> 1.1 ms of wall time
# (measured). The database stays consistent; an OS crash or a power cut can lose the last commits, SQLite's
# documented trade-off for WAL. `?synchronous=FULL` in DATABASE_URL keeps every commit on disk.
SQLITE_SYNCHRONOUS = "NORMAL"


def with_sqlite_defaults(url: str) -> str:
    """A SQLite URL with SQLITE_SYNCHRONOUS unless it names its own; any other URL unchanged."""
    if not url.startswith("sqlite://") or "synchronous=" in url.partition("?")[2]:
        return url
    return f"{url}{'&' if '?' in url else '?'}synchronous={SQLITE_SYNCHRONOUS}"


async def keep_session(connection: Any) -> None:
    """asyncpg's pool, on each release of a connection, rolls back a transaction left open and then, by
    default, sends `SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`: a round trip and a
    server transaction each time, two per prediction (the web's INSERT, the worker's batch: 835 for 420
    predictions, from PostgreSQL's statement log). Nothing here takes advisory locks, opens cursors, listens
    or sets session settings, so there is nothing for it to undo: this reset sends nothing (the rollback
    still happens, before it). Side by side with the default (bench/web_cost.py, 2 runs of 5 rounds),
    PostgreSQL's CPU per upload 0.72 and 0.75 ms against 0.75 and 1.00, the web's database stage 0.44 and
    0.45 ms against 0.51 and 0.53."""


def connection_config(url: str) -> str | dict[str, Any]:
    """Tortoise's connection for `url`: asyncpg's pool with `keep_session` for its reset; SQLite with its
    defaults (with_sqlite_defaults); anything else as the URL says."""
    config = expand_db_url(url)
    if config["engine"] != "tortoise.backends.asyncpg":
        return with_sqlite_defaults(url)
    config["credentials"]["reset"] = keep_session
    return config


def tortoise_config(database_url: str | None = None, in_turns: bool = False) -> dict[str, Any]:
    """The ORM's configuration; `in_turns`, its connections taken in turns by person (the web's: app/db_turns.py)."""
    url = database_url or get_settings().database_url
    if url.startswith("sqlite://") and url != "sqlite://:memory:":
        Path(url.removeprefix("sqlite://").partition("?")[0]).parent.mkdir(parents=True, exist_ok=True)
    return {
        "connections": {"default": db_turns.in_turns(connection_config(url)) if in_turns else connection_config(url)},
        "apps": {
            "app": {
                "models": ["app.models"],
                "default_connection": "default",
                "migrations": "migrations",
            }
        },
        "use_tz": True,
        "timezone": "UTC",
    }


def __getattr__(name: str) -> dict[str, Any]:
    """`TORTOISE_ORM`, for the `tortoise` CLI (`tortoise makemigrations`, `tortoise migrate`), named in
    pyproject.toml: made when asked for, so that importing this module reads no settings."""
    if name == "TORTOISE_ORM":
        return tortoise_config()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


async def apply_migrations(database_url: str | None = None) -> None:
    """Bring the schema up to date with Tortoise's built-in migrations.

    In a context of its own, so that it leaves the process's ORM state (a running app's) untouched.
    """
    async with TortoiseContext():
        await migrate(config=tortoise_config(database_url))


async def init_db(database_url: str | None = None, in_turns: bool = False) -> None:
    # The global fallback lets requests (other tasks than the lifespan's) see the connections.
    await Tortoise.init(config=tortoise_config(database_url, in_turns), _enable_global_fallback=True)


async def close_db() -> None:
    await Tortoise.close_connections()
