"""A prediction charged 0 is made and charged in one transaction (predictions.insert): found by reading the code,
a failure between the two (SQLite's write lock held by another connection past its 5 s wait: "database is
locked") answered the upload 503 and forgot its original, but left its row queued, sent to the model again by
the recovery of lost jobs: a client that retried got two predictions of one image."""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from tortoise.exceptions import OperationalError

from app import admin, usage
from app.models import Prediction
from app.settings import Settings
from tests import samples
from tests.conftest import CountingClassifier
from tests.helpers import eventually
from tests.test_quotas import upload

Client = httpx.AsyncClient
OLD = timedelta(days=100)
# A statement waiting for a lock on the predictions table or its rows: pg_stat_activity may still show the
# statement before it, so it is told by its lock, not its text.
WAITING = (
    "SELECT DISTINCT pid FROM pg_locks WHERE NOT granted AND pid <> pg_backend_pid()"
    " AND (relation = 'predictions'::regclass OR locktype = 'transactionid')"
)


def on_sqlite(settings: Settings) -> bool:
    return settings.database_url.startswith("sqlite")


async def sent_again_as_a_run_lets_it_go(
    client: Client, auth: dict[str, str], settings: Settings, monkeypatch: pytest.MonkeyPatch, seed: int
) -> tuple[bytes, str, int]:
    """A photo classified once, long ago (no cache hit): sent again, it is charged 0 as its person keeps it, and
    a retention run then lets the old prediction go before the new row is made, so the row charges itself (an
    UPDATE: usage.charged_if_none). The photo, the old prediction's id, its person's id."""
    photo = samples.photo(seed, fmt="PNG")
    first = await upload(client, auth, photo)
    assert first.status_code == 200, first.text
    old = datetime.now(UTC) - OLD
    await Prediction.filter(id=first.json()["id"]).update(created_at=old, finished_at=old)
    charged_bytes, ran = usage.charged_bytes, list[bool]()

    async def pruned_meanwhile(*args: Any) -> int:
        charged = await charged_bytes(*args)
        if not ran:
            ran.append(True)
            await admin.prune(settings.upload_dir, timedelta(days=90))
        return charged

    monkeypatch.setattr(usage, "charged_bytes", pruned_meanwhile)
    user_id: int = (await Prediction.get(id=first.json()["id"])).user_id  # type: ignore[attr-defined]
    return photo, first.json()["id"], user_id


def sqlite_takes_the_write_lock_if_free(path: str, tried: asyncio.Event, loop: asyncio.AbstractEventLoop) -> bool:
    """Another connection writing for 7 s if it can take the write lock at once: past the app's 5 s wait."""
    db = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:  # held
            return False
        finally:
            loop.call_soon_threadsafe(tried.set)
        time.sleep(7)
        db.execute("ROLLBACK")
        return True
    finally:
        db.close()


async def postgres_takes_the_table_if_free(url: str, tried: asyncio.Event) -> bool:
    """The same on PostgreSQL, which waits for a lock without end: the predictions table locked at once if it can
    be, and the charge that then waits for it cancelled, as a lock_timeout would end it."""
    db = await asyncpg.connect(url)
    try:
        await db.execute("BEGIN")
        try:
            await db.execute("LOCK TABLE predictions IN EXCLUSIVE MODE NOWAIT")
        except asyncpg.LockNotAvailableError:  # held
            return False
        finally:
            tried.set()
        pids: list[int] = []

        async def waiting() -> bool:
            pids[:] = [row["pid"] for row in await db.fetch(WAITING)]
            return bool(pids)

        await eventually(waiting, seconds=30, what="the charge waiting for the table")
        for pid in pids:
            await db.execute("SELECT pg_cancel_backend($1)", pid)
        return True
    finally:
        await db.close()  # its transaction rolled back


async def test_another_connection_cannot_write_between_a_row_and_its_charge(
    client: Client,
    auth: dict[str, str],
    worker: CountingClassifier,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another connection tries to write just after the row is made, before it charges itself: that left the row
    made, the charge failed and the upload answered 503. The row and its charge are one transaction now, which
    holds the write lock (SQLite) or its table lock (PostgreSQL) from the row on: the other connection waits."""
    photo, first, user_id = await sent_again_as_a_run_lets_it_go(client, auth, settings, monkeypatch, 15_011)
    charged_if_none, took = usage.charged_if_none, list[asyncio.Task[bool]]()

    async def another_writer_first(prediction: Prediction, size: int) -> Prediction:
        if not took:
            tried = asyncio.Event()
            if on_sqlite(settings):
                path = settings.database_url.removeprefix("sqlite://").partition("?")[0]
                loop = asyncio.get_running_loop()
                took.append(
                    asyncio.create_task(asyncio.to_thread(sqlite_takes_the_write_lock_if_free, path, tried, loop))
                )
            else:
                url = settings.database_url.replace("postgres://", "postgresql://")
                took.append(asyncio.create_task(postgres_takes_the_table_if_free(url, tried)))
            await tried.wait()
        return await charged_if_none(prediction, size)

    monkeypatch.setattr(usage, "charged_if_none", another_writer_first)
    try:
        again = await upload(client, auth, photo)
    finally:
        taken = await took[0] if took else None
    rows = await Prediction.filter(user_id=user_id, image_sha256=hashlib.sha256(photo).hexdigest()).values_list(
        "id", flat=True
    )
    answered = {first} | ({again.json()["id"]} if again.status_code == 200 else set())
    assert {str(row) for row in rows} == answered, "a row its upload was refused for"
    assert again.status_code == 200 and taken is False, again.text
    assert (await Prediction.get(id=again.json()["id"])).image_bytes == len(photo)
    assert await usage.stored_bytes(user_id) == len(photo)


@pytest.mark.parametrize("wait", ["true", "false"])
async def test_a_failed_charge_leaves_no_row(
    client: Client,
    auth: dict[str, str],
    worker: CountingClassifier,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    wait: str,
) -> None:
    """The charge made, then its transaction fails as SQLite's busy wait ends (a synchronous upload, and an
    async one): the upload is answered 503, and no row of it is left, queued or charged."""
    photo, first, user_id = await sent_again_as_a_run_lets_it_go(client, auth, settings, monkeypatch, 15_021)
    charged_if_none = usage.charged_if_none

    async def failed_after(prediction: Prediction, size: int) -> Prediction:
        await charged_if_none(prediction, size)
        raise OperationalError("database is locked")

    monkeypatch.setattr(usage, "charged_if_none", failed_after)
    again = await upload(client, auth, photo, wait=wait)
    assert again.status_code == 503, again.text
    rows = await Prediction.filter(user_id=user_id, image_sha256=hashlib.sha256(photo).hexdigest()).values_list(
        "id", flat=True
    )
    assert [str(row) for row in rows] == [first]
    assert await usage.stored_bytes(user_id) == 0  # the old one let it go, and nothing charged it since


def sqlite_charges_it(path: str, relative_path: str, first: str) -> bool:
    """The old prediction keeps the original again, charged, from another connection: whether it was let."""
    db = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        db.execute("UPDATE predictions SET image_path = ? WHERE id = ?", (relative_path, first))
        return True
    except sqlite3.IntegrityError:  # predictions_charged_once: the row's charge came first
        return False
    finally:
        db.close()


async def postgres_charges_it(url: str, relative_path: str, first: str, ready: asyncio.Event) -> bool:
    """The same on PostgreSQL, committed once the row's charge waits for it (its index entry is pending)."""
    db = await asyncpg.connect(url)

    async def waiting() -> bool:
        return bool(await db.fetch(WAITING))

    try:
        async with db.transaction():
            await db.execute("UPDATE predictions SET image_path = $1 WHERE id = $2", relative_path, first)
            ready.set()
            await eventually(waiting, seconds=30, what="the row's charge waiting")
        return True
    finally:
        await db.close()


async def test_a_charge_at_once_from_another_connection_charges_it_once(
    client: Client,
    auth: dict[str, str],
    worker: CountingClassifier,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another connection charges the person's original as the row charges itself (the run's heir, or an upload
    of it at once): the index predictions_charged_once refuses the second. On PostgreSQL the other commits as the
    row's charge waits for it, and the row's is refused: a refused statement ends its transaction unless within a
    savepoint, and the row is made, charged 0. SQLite writes one connection at a time: the other waits for the
    row's transaction, and is refused."""
    photo, first, user_id = await sent_again_as_a_run_lets_it_go(client, auth, settings, monkeypatch, 15_031)
    charged_if_none, other = usage.charged_if_none, list[asyncio.Task[bool]]()
    sha = hashlib.sha256(photo).hexdigest()
    relative_path = f"{sha[:2]}/{sha}.png"  # the old one's, cleared by the run

    async def another_at_once(prediction: Prediction, size: int) -> Prediction:
        if on_sqlite(settings):
            path = settings.database_url.removeprefix("sqlite://").partition("?")[0]
            other.append(asyncio.create_task(asyncio.to_thread(sqlite_charges_it, path, relative_path, first)))
        else:
            url, ready = settings.database_url.replace("postgres://", "postgresql://"), asyncio.Event()
            other.append(asyncio.create_task(postgres_charges_it(url, relative_path, first, ready)))
            await ready.wait()
        return await charged_if_none(prediction, size)

    monkeypatch.setattr(usage, "charged_if_none", another_at_once)
    again = await upload(client, auth, photo)
    others = await other[0]
    assert again.status_code == 200, again.text
    charged = (await Prediction.get(id=again.json()["id"])).image_bytes
    assert (charged, others) in {(0, True), (len(photo), False)}
    assert others is not on_sqlite(settings)  # SQLite's other connection waited for the row's transaction
    assert await usage.stored_bytes(user_id) == len(photo)


async def test_a_run_letting_the_charged_one_go_as_the_row_is_made_passes_it_the_charge(
    client: Client,
    auth: dict[str, str],
    worker: CountingClassifier,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The row is seen by others once its transaction ends, after its look: a retention run that let the charged
    one go after the look, and searched for a newer one to pass its charge to before the transaction ended, did
    not find the row, and the original was kept charged to nobody. The look holds the charged one it found
    (PostgreSQL: FOR SHARE; SQLite: the transaction's write lock, and this process's one connection): the run
    waits, and finds the row. The run starts here as the look found the charged one."""
    photo = samples.photo(15_041, fmt="PNG")
    first = await upload(client, auth, photo)
    assert first.status_code == 200, first.text
    old = datetime.now(UTC) - OLD
    await Prediction.filter(id=first.json()["id"]).update(created_at=old, finished_at=old)
    charged_if_none, runs = usage.charged_if_none, list[asyncio.Task[admin.PruneReport]]()
    apart = contextvars.copy_context()  # the run's own connection, not the upload's transaction (a context var)

    async def run_meanwhile(prediction: Prediction, size: int) -> Prediction:
        found = await charged_if_none(prediction, size)
        runs.append(asyncio.create_task(admin.prune(settings.upload_dir, timedelta(days=90)), context=apart))
        if not on_sqlite(settings):  # SQLite: the run waits for this process's connection, held till the end
            url = settings.database_url.replace("postgres://", "postgresql://")
            db = await asyncpg.connect(url)

            async def waiting_or_done() -> bool:
                return runs[0].done() or bool(await db.fetch(WAITING))

            try:
                await eventually(waiting_or_done, seconds=30, what="the run waiting, or done")
            finally:
                await db.close()
        return found

    monkeypatch.setattr(usage, "charged_if_none", run_meanwhile)
    again = await upload(client, auth, photo)
    report = await runs[0]
    assert again.status_code == 200, again.text
    assert report.kept >= 1  # stored again by the upload
    assert (await Prediction.get(id=first.json()["id"])).image_path == ""
    assert (await Prediction.get(id=again.json()["id"])).image_bytes == len(photo)
    user_id: int = (await Prediction.get(id=first.json()["id"])).user_id  # type: ignore[attr-defined]
    assert await usage.stored_bytes(user_id) == len(photo)
