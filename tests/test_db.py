"""Tortoise's built-in migrations build the schema from nothing, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

import httpx
from tortoise import connections
from tortoise.backends.asyncpg.client import AsyncpgDBClient
from tortoise.backends.base.config_generator import expand_db_url
from tortoise.backends.sqlite.client import SqliteClient
from tortoise.context import TortoiseContext
from tortoise.migrations.api.migrate import migrate

from app import db
from app.models import Collection, Prediction, User
from app.settings import Settings

TABLES = {"users", "predictions", "feedback"}
ROOT = Path(__file__).resolve().parents[1]
SQLITE_TABLES = "SELECT name FROM sqlite_master WHERE type='table'"
POSTGRES_TABLES = "SELECT table_name AS name FROM information_schema.tables WHERE table_schema = 'public'"


async def tables(url: str) -> set[str]:
    async with TortoiseContext() as context:
        await context.init(config=db.tortoise_config(url))
        query = POSTGRES_TABLES if url.startswith("postgres") else SQLITE_TABLES
        _, rows = await context.connections.get("default").execute_query(query)
    return {row["name"] for row in rows}


def sqlite_tables(path: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        return {name for (name,) in connection.execute(SQLITE_TABLES)}


def test_migrations_build_a_fresh_sqlite_database(tmp_path: Path) -> None:
    # In processes of their own: initialising Tortoise on SQLite here would bind the session's models to
    # SQLite's dialect, and every later test of a PostgreSQL session would send SQLite's SQL.
    path = tmp_path / "fresh.sqlite3"
    migrate = [
        sys.executable,
        "-c",
        "import asyncio, sys; from app import db; asyncio.run(db.apply_migrations(sys.argv[1]))",
    ]
    subprocess.run([*migrate, f"sqlite://{path}"], check=True, cwd=ROOT)
    assert sqlite_tables(path) >= TABLES
    subprocess.run([*migrate, f"sqlite://{path}"], check=True, cwd=ROOT)  # again: changes nothing, does not fail
    assert sqlite_tables(path) >= TABLES


async def test_the_session_database_was_built_by_migrations(settings: Settings, migrated: None) -> None:
    # The session's database (PostgreSQL in CI) was created empty; its schema comes from the migrations.
    assert await tables(settings.database_url) >= TABLES


async def synchronous_of(url: str) -> int:
    """The pragma on a connection of Tortoise's own SQLite client, made as the app's config makes it. Not
    through Tortoise.init: that binds the models to SQLite's dialect, for the rest of a PostgreSQL session."""
    config = expand_db_url(db.tortoise_config(url)["connections"]["default"])
    client = SqliteClient(connection_name="pragma-check", **config["credentials"])
    await client.create_connection(with_db=True)
    try:
        _, rows = await client.execute_query("PRAGMA synchronous")
    finally:
        await client.close()
    return int(rows[0][0])


async def test_sqlite_commits_without_waiting_for_the_disk_unless_the_url_asks(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'sync.sqlite3'}"
    assert await synchronous_of(url) == 1  # NORMAL: see db.SQLITE_SYNCHRONOUS
    assert await synchronous_of(f"{url}?synchronous=FULL") == 2
    assert await synchronous_of(f"{url}?journal_mode=WAL") == 1
    assert db.with_sqlite_defaults("postgres://u@h/d") == "postgres://u@h/d"


def test_postgres_connections_get_a_pool_reset_that_sends_nothing() -> None:
    for url in ("postgres://u@h:5432/d", "postgresql://u@h/d?maxsize=20"):
        config = db.connection_config(url)
        assert isinstance(config, dict) and config["engine"] == "tortoise.backends.asyncpg"
        assert config["credentials"]["reset"] is db.keep_session
    assert db.connection_config("sqlite:///tmp/x.sqlite3") == "sqlite:///tmp/x.sqlite3?synchronous=NORMAL"
    assert db.connection_config("psycopg://u@h/d") == "psycopg://u@h/d"  # not asyncpg's pool: as it was


async def test_a_released_connection_is_not_reset_by_a_query(settings: Settings, migrated: None) -> None:
    """The session's database as the app configures it. On PostgreSQL, asyncpg's pool sends its default reset
    (`... RESET ALL`) on every release unless told otherwise (db.keep_session says why there is nothing to
    undo); a transaction left open must still be rolled back. On SQLite there is no pool to reset: its
    connection is the URL with its defaults."""
    config = db.connection_config(settings.database_url)
    if not isinstance(config, dict):
        assert config == db.with_sqlite_defaults(settings.database_url)
        return
    client = AsyncpgDBClient(connection_name="reset-check", **{**config["credentials"], "minsize": 1, "maxsize": 1})
    await client.create_connection(with_db=True)
    sent: list[str] = []
    try:
        async with client.acquire_connection() as connection:
            connection.add_query_logger(lambda query: sent.append(query.query))
            await connection.execute("BEGIN")  # left open by its user
        async with client.acquire_connection() as connection:  # the pool's only connection, again
            assert not connection.is_in_transaction()
            await connection.execute("SELECT 1")
        await asyncio.sleep(0)  # the logger is called soon after each query, not during it
    finally:
        await client.close()
    assert sent == ["BEGIN", "ROLLBACK", "SELECT 1"]


async def test_a_column_added_since_the_release_before_has_a_database_default(
    settings: Settings, client: httpx.AsyncClient
) -> None:
    # While a new release rolls out, web processes of the release before still insert rows without the
    # columns added since: a column they do not name must default in the database, not only in Python.
    # (Collection.archive_bytes had only a Python default: collections answered 500 on the old code.)
    user = await User.create(email=f"old-release-{uuid4().hex[:8]}@example.com", password_hash="x")
    collection_id = uuid4()
    columns = "id, user_id, name, total, status, archive_path, created_at"
    marks = "$1, $2, $3, $4, $5, $6, $7" if settings.database_url.startswith("postgres") else "?, ?, ?, ?, ?, ?, ?"
    values = [str(collection_id), user.id, "old", 1, "reading", "", datetime.now(UTC)]
    await connections.get("default").execute_query(f"INSERT INTO collections ({columns}) VALUES ({marks})", values)
    assert (await Collection.get(id=collection_id)).archive_bytes == 0


async def upgrade_with_feedback(url: str) -> None:
    """A database at 0013 holding feedback, then migrated on: the counts per label start as its feedback's."""
    async with TortoiseContext():  # which closes the migration's connection
        await migrate(config=db.tortoise_config(url), target="app.0013_collection_counts")
    async with TortoiseContext() as context:
        await context.init(config=db.tortoise_config(url))
        ada = await User.create(email="ada@example.com", password_hash="x")
        for label, right in [("hen", True), ("hen", False), ("hen", True), ("tench", False), (None, True)]:
            made = await Prediction.create(
                user=ada, image_sha256="0" * 64, image_path="", model_name="m", model_weights="w", label=label
            )
            await made_before_0020(made, ada, right)
    await db.apply_migrations(url)


async def made_before_0020(prediction: Prediction, user: User, is_correct: bool) -> None:
    """Feedback as the releases before migration 0020 made it: without its prediction's label."""
    now = datetime.now(UTC).isoformat(sep=" ")
    await connections.get("default").execute_query(
        "INSERT INTO feedback (prediction_id, user_id, is_correct, comment, created_at, updated_at)"
        " VALUES (?, ?, ?, '', ?, ?)",
        [str(prediction.id), user.id, is_correct, now, now],
    )


def test_the_counts_per_label_are_filled_from_the_feedback_already_there(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'upgraded.sqlite3'}"
    upgrade = "import asyncio, sys; from tests.test_db import upgrade_with_feedback as u; asyncio.run(u(sys.argv[1]))"
    subprocess.run([sys.executable, "-c", upgrade, url], check=True, cwd=ROOT)  # a process of its own: see above
    with contextlib.closing(sqlite3.connect(tmp_path / "upgraded.sqlite3")) as connection:
        counts = set(connection.execute("SELECT label, total, agreed FROM feedback_by_label"))
        copied = sorted(connection.execute("SELECT predicted_label, is_correct FROM feedback ORDER BY id"), key=str)
    assert counts == {("hen", 3, 2), ("tench", 1, 0), ("", 1, 1)}
    # And migration 0020 copied each prediction's label onto its feedback, which the filters read.
    assert copied == sorted([("hen", 1), ("hen", 0), ("hen", 1), ("tench", 0), (None, 1)], key=str)


async def upgrade_with_emails_as_typed(url: str) -> None:
    """A database at 0016 whose accounts were made before emails were normalised, then migrated on."""
    async with TortoiseContext():
        await migrate(config=db.tortoise_config(url), target="app.0016_charged_once")
    async with TortoiseContext() as context:
        await context.init(config=db.tortoise_config(url))
        typed = ["Ada@Example.com", "BOB@example.com", "bob@example.com", "carol@example.com", "\uff24an@example.com"]
        for email in typed:  # the last with a fullwidth D
            await User.create(email=email, password_hash="x")
    await db.apply_migrations(url)


def test_emails_stored_as_typed_are_spelled_as_sign_in_looks_them_up(tmp_path: Path) -> None:
    """Found in review: accounts made before 0396e8f kept their email as typed, and sign-in looks it up
    normalised (NFKC, case folded): `Ada@Example.com` could not sign in. One whose spelling another account has
    since taken is left as typed."""
    url = f"sqlite://{tmp_path / 'upgraded.sqlite3'}"
    upgrade = (
        "import asyncio, sys; from tests.test_db import upgrade_with_emails_as_typed as u; asyncio.run(u(sys.argv[1]))"
    )
    subprocess.run([sys.executable, "-c", upgrade, url], check=True, cwd=ROOT)
    with contextlib.closing(sqlite3.connect(tmp_path / "upgraded.sqlite3")) as connection:
        emails = [email for (email,) in connection.execute("SELECT email FROM users ORDER BY id")]
    assert emails == ["ada@example.com", "BOB@example.com", "bob@example.com", "carol@example.com", "dan@example.com"]
