"""The database's connections in turns by person (app/db_turns.py): one person's many requests in the database
hold their share of the connections, and the next person's work is served meanwhile, or next, not after all of
theirs. Over the tests' real database, through the app's own connections."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Hashable
from pathlib import Path
from uuid import uuid4

import httpx
import pytest
from tortoise import connections
from tortoise.transactions import in_transaction

from app import db, db_turns
from app.models import User
from app.settings import Settings
from app.turns import Turns
from app.web.limits import Person
from tests.helpers import eventually, sign_up
from tests.page_helpers import make_prediction
from tests.web.test_feedback import waited_for, write_held

# Each holder's transaction (a connection taken from the pool) stays open until its release is set.
Release = asyncio.Event
Entered = list[tuple[Hashable, Release]]


async def hold(owner: Hashable, entered: Entered, release: Release) -> None:
    with db_turns.owned_by(owner):
        async with in_transaction():
            entered.append((owner, release))
            await release.wait()


def pool_size() -> int:
    """The connections the app's database client has: asyncpg's pool, or SQLite's one."""
    return int(getattr(connections.get("default"), "pool_maxsize", 1))


async def test_one_persons_work_in_the_database_does_not_crowd_out_the_next_person(client: httpx.AsyncClient) -> None:
    """A's transactions, 4 more than the connections, all waiting in the database; then B's. Taken first come,
    first served, A held every connection and B got in after all of A's (the 10th on PostgreSQL, the 6th on
    SQLite). In turns, A holds all connections but one, B gets in at once (or, with SQLite's one connection,
    B takes turns with A): B gets in by the time A's share and one more of A's have."""
    share = max(1, pool_size() - db_turns.SPARE_CONNECTIONS)
    entered: Entered = []
    holders = [asyncio.create_task(hold("a", entered, Release())) for _ in range(pool_size() + 4)]
    try:
        await eventually(lambda: _true(len(entered) >= share), what="A's share in the database")
        for _ in range(10):
            await asyncio.sleep(0)  # A's others queue up, as far as they go without the database
        holders.append(asyncio.create_task(hold("b", entered, Release())))
        for _ in range(10):
            await asyncio.sleep(0)  # and B's, behind them
        released = 0
        while "b" not in [owner for owner, _ in entered]:
            seen = len(entered)
            entered[released][1].set()  # A's that got in first lets go: the next gets in
            released += 1
            await eventually(more_than(entered, seen), what="the next one in the database")
        assert [owner for owner, _ in entered].index("b") <= share + 1, entered
    finally:
        for _, release in entered:
            release.set()
        while not all(holder.done() for holder in holders):
            for _, release in entered:
                release.set()
            await asyncio.sleep(0.01)
        await asyncio.gather(*holders)


async def test_a_requests_database_work_is_its_persons(client: httpx.AsyncClient) -> None:
    """While A's share of the connections is held (as A's requests would hold it), A's next request waits for
    A's turn, and a request of B's is answered meanwhile (with SQLite's one connection, once A's let go)."""
    a, b = await sign_up(client), await sign_up(client)
    a_id = (await client.get("/api/users/me", headers=a)).json()["id"]
    turns = connections.get("default").turns
    person = Person(a_id)
    async with contextlib.AsyncExitStack() as held:
        for each in all_turns():  # SQLite's reads too, on their connection
            for _ in range(each.per_owner):
                await held.enter_async_context(each.slot(person))
        waiting = asyncio.create_task(client.get("/api/predictions", headers=a))
        await eventually(lambda: waiting_in_turn(person), what="A's request waiting for A's turn")
        if turns.free:
            assert (await client.get("/api/predictions", headers=b)).status_code == 200
        assert not waiting.done()
    assert (await waiting).status_code == 200
    assert all(person not in each.held and person not in each.waiting for each in all_turns())


def all_turns() -> list[Turns]:
    """The turns of the app's database client: its connections', and SQLite's reads' (app/db_turns.py)."""
    client = connections.get("default")
    reads = getattr(client, "reads", client)
    return [client.turns] if reads is client else [client.turns, reads.turns]


async def waiting_in_turn(person: Person) -> bool:
    return any(person in each.waiting for each in all_turns())


async def test_reads_go_on_while_a_write_waits_for_a_lock(client: httpx.AsyncClient, settings: Settings) -> None:
    """Another connection holds SQLite's write lock (the worker's, the CLI's), and A's edit waits for it on the
    web's connection, up to the busy timeout. Every read of everyone waited behind it (B's list, the readiness
    probe: 2.5 s of a 3 s hold); in WAL mode they need no lock, and are answered on a connection of their own
    while the edit still waits. On PostgreSQL the edit waits for its row, held, on one of the pool's."""
    a, b = await sign_up(client), await sign_up(client)
    a_id = (await client.get("/api/users/me", headers=a)).json()["id"]
    prediction = await make_prediction(await User.get(id=a_id), image_path="")  # no original: the admin page shows none
    url = f"/api/predictions/{prediction.id}/feedback"
    assert (await client.post(url, headers=a, json={"is_correct": False})).status_code == 200
    async with write_held(settings, str(prediction.id)) as held:
        editing = asyncio.create_task(client.post(url, headers=a, json={"is_correct": True}))
        writes = connections.get("default").turns
        on_sqlite = held.on_sqlite
        edit_waits = (lambda: _true(Person(a_id) in writes.held)) if on_sqlite else (lambda: waited_for(held.postgres))
        await eventually(edit_waits, what="A's edit waiting for the lock")
        listed, ready = await asyncio.gather(client.get("/api/predictions", headers=b), client.get("/health/ready"))
        assert listed.status_code == 200 and ready.json()["database"] is True  # not ready with no worker: no matter
        assert not editing.done(), "the reads were answered only once the edit was over"
    assert (await editing).status_code == 200


async def test_a_transactions_reads_are_on_its_own_connection(client: httpx.AsyncClient) -> None:
    """SQLite's reads go on a connection of their own, but a transaction's see its writes, not yet committed."""
    email = f"in-transaction-{uuid4().hex[:8]}@example.com"
    with pytest.raises(LookupError):
        async with in_transaction():
            await User.create(email=email, password_hash="x")
            assert await User.filter(email=email).exists()
            raise LookupError("undone")
    assert not await User.filter(email=email).exists()


def test_a_person_holds_all_connections_but_one() -> None:
    assert (db_turns.fair_turns(5).free, db_turns.fair_turns(5).per_owner) == (5, 4)
    assert (db_turns.fair_turns(1).free, db_turns.fair_turns(1).per_owner) == (1, 1)


def more_than(entered: Entered, seen: int) -> Callable[[], Awaitable[bool]]:
    return lambda: _true(len(entered) > seen)


async def _true(value: bool) -> bool:
    return value


def test_the_webs_connections_are_in_turns_with_their_own_settings() -> None:
    postgres = db_turns.in_turns(db.connection_config("postgres://u@h:5432/d?maxsize=20"))
    assert isinstance(postgres, dict) and postgres["engine"] == "app.db_turns"
    assert postgres["credentials"]["reset"] is db.keep_session and postgres["credentials"]["maxsize"] == "20"
    sqlite = db.tortoise_config("sqlite:///tmp/x.sqlite3", in_turns=True)["connections"]["default"]
    assert sqlite["engine"] == "app.db_turns" and sqlite["credentials"]["synchronous"] == "NORMAL"
    assert db.tortoise_config("sqlite:///tmp/x.sqlite3")["connections"]["default"] == db.connection_config(
        "sqlite:///tmp/x.sqlite3"
    )  # migrations and the worker: Tortoise's own clients
    assert db_turns.in_turns("psycopg://u@h/d") == "psycopg://u@h/d"


async def test_a_transaction_cancelled_as_it_begins_leaves_the_connection_usable(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    """Tortoise's SQLite transaction takes the connection's lock, then awaits BEGIN. A task cancelled there (a
    collection's reading stopped) never gave the lock back, and every later write of the process waited for it
    for ever (a test run hung so). A SQLite client of its own, on both databases' runs: the app's may be
    PostgreSQL's."""
    sqlite = db_turns.FairSqliteClient(str(tmp_path / "cancelled.sqlite3"), db_turns.SQLITE, connection_name="cancel")
    await sqlite.create_connection(with_db=True)
    try:
        await sqlite.execute_script("CREATE TABLE t (x INTEGER)")

        async def begin() -> None:
            async with sqlite._in_transaction():
                await asyncio.sleep(3600)

        task = asyncio.create_task(begin())
        await asyncio.sleep(0)  # it took the lock, and waits for BEGIN
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await asyncio.wait_for(sqlite.execute_query("INSERT INTO t VALUES (1)"), 10)
        assert (await sqlite.execute_query("SELECT count(*) AS n FROM t"))[1][0]["n"] == 1
    finally:
        await sqlite.close()
