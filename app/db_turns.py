"""Fair turns at the database's connections: a Tortoise backend (the web's: app/db.py, `in_turns`) whose
connections, and transactions, are taken in turns by the person a request is for (`owned_by`, set by
app/web/limits.py), at a `Turns` sized to the process's connections (asyncpg's pool; SQLite's one, and its
reads' one: FairSqliteClient). Taken first come, first served, one person's 32 list requests at once held all 5
of the pool's, and another person's list waited 110-470 ms (median; 1.1-1.7 s at worst); in turns, 61-118 ms
(0.19-0.69 s at worst), on a loaded 2-core machine. A turn is held only while a connection is: not while a
request waits for a worker's result, a decode, or a client reading a streamed page. A person waits here with at
most as many queries as it has requests open, which app/web/limits.py bounds (OPEN_EACH; 429 past it). Work of
no one's takes no turn, as before: the feeder's, recovery's, the health probes', the token's check (before a
request is known to be anyone's), and the worker process's."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Hashable, Iterator, Sequence
from contextvars import ContextVar
from typing import Any

from tortoise.backends.asyncpg.client import AsyncpgDBClient
from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.backends.base.config_generator import expand_db_url
from tortoise.backends.sqlite.client import SqliteClient, SqliteTransactionContext, SqliteTransactionWrapper
from tortoise.connection import get_connections

from app.turns import Turns

# The connections one person may hold at once: all of them but this many, left for the next person at once.
SPARE_CONNECTIONS = 1
# The engines this backend takes turns at, by Tortoise's name of them (in the config's credentials as
# `turns_over`: Tortoise passes a backend nothing else of its config).
ASYNCPG, SQLITE = "tortoise.backends.asyncpg", "tortoise.backends.sqlite"

# Whose turn a query takes: a request's person (or address), set by the web's middleware; None, no turn.
_owner: ContextVar[Hashable | None] = ContextVar("database_owner", default=None)


@contextlib.contextmanager
def owned_by(owner: Hashable) -> Iterator[None]:
    """The database work done within (in this task, and tasks it starts) is `owner`'s, in `owner`'s turns."""
    token = _owner.set(owner)
    try:
        yield
    finally:
        _owner.reset(token)


def fair_turns(connections: int) -> Turns:
    return Turns(connections, per_owner=max(1, connections - SPARE_CONNECTIONS))


@contextlib.asynccontextmanager
async def in_turn(turns: Turns, owner: Hashable, held: Any) -> AsyncIterator[Any]:
    """`held` (a connection's or a transaction's context) entered in `owner`'s turn, held until it is left."""
    async with turns.slot(owner), held as entered:
        yield entered


def taken_in_turn(turns: Turns, held: Any) -> Any:
    """`held` in the turn of the person the work is for; as it is for work of no one's."""
    owner = _owner.get()
    return held if owner is None else in_turn(turns, owner, held)


class InTurns(BaseDBAsyncClient):
    """A client whose connections and transactions are taken in turns at its `turns` (its __init__ sets them)."""

    turns: Turns

    def acquire_connection(self) -> Any:
        return taken_in_turn(self.turns, super().acquire_connection())

    def _in_transaction(self) -> Any:
        return taken_in_turn(self.turns, super()._in_transaction())


class FairAsyncpgClient(InTurns, AsyncpgDBClient):
    def __init__(self, turns_over: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.turns = fair_turns(self.pool_maxsize)


def is_read(query: str) -> bool:
    """A statement that only reads (the reads' connection is query-only: one that writes would fail there)."""
    return query.lstrip()[:6].upper() == "SELECT"


class SqliteTransaction(SqliteTransactionContext):
    """Tortoise's SQLite transaction takes the connection's lock, then awaits BEGIN: a task cancelled in between
    (a collection's reading stopped) never gave the lock back, and every later write of the process waited for
    it for ever. Here the lock is given back, and whatever BEGIN began is rolled back."""

    async def __aenter__(self) -> Any:
        await self._trxlock.acquire()
        try:
            await self.ensure_connection()
            self.token = get_connections().set(self.connection_name, self.connection)
            await self.connection.begin()
        except BaseException:
            try:
                with contextlib.suppress(Exception):  # shielded: runs to its end even if cancelled again
                    await asyncio.shield(self.connection._connection.rollback())
            finally:
                with contextlib.suppress(AttributeError):  # no token: it failed before setting one
                    get_connections().reset(self.token)
                self._trxlock.release()
            raise
        return self.connection


class CancelSafeSqliteClient(SqliteClient):
    def _in_transaction(self) -> Any:
        return SqliteTransaction(SqliteTransactionWrapper(self), self._lock)


class FairSqliteClient(InTurns, CancelSafeSqliteClient):
    """SQLite's connection, in turns by person; and, for a file, a second one (`reads`, query-only, in turns of
    its own) for the reads made outside a transaction (a transaction's stay on its connection). A write waits
    on the first for the file's write lock while another process holds it (the worker, the CLI), up to the
    busy timeout (then 503): on one connection every person's reads waited behind it, 2.5 s of a 3 s hold
    (4.5 s as the write gave up); WAL lets them go on, and now they do: 0.005-0.03 s (measured). Not Tortoise's
    routers: they route only models' queries, and are the process's, reset by any other Tortoise set up in it."""

    def __init__(self, file_path: str, turns_over: str, reads_apart: bool = True, **kwargs: Any) -> None:
        super().__init__(file_path, **kwargs)
        self.turns = fair_turns(1)  # its one connection, in turns by person
        apart = reads_apart and file_path != ":memory:"  # a second connection to :memory: is another database
        self.reads = FairSqliteClient(file_path, turns_over, False, **kwargs, query_only="ON") if apart else self

    def reader(self, query: str) -> FairSqliteClient | None:
        """The reads' connection when `query` may go there (a read, and this client has one), else None."""
        return self.reads if self.reads is not self and is_read(query) else None

    async def execute_query(self, query: str, values: list[Any] | None = None) -> tuple[int, Sequence[dict[str, Any]]]:
        reader = self.reader(query)
        return await (reader.execute_query(query, values) if reader else super().execute_query(query, values))

    async def execute_query_dict(self, query: str, values: list[Any] | None = None) -> list[dict[str, Any]]:
        reader = self.reader(query)
        return await (reader.execute_query_dict(query, values) if reader else super().execute_query_dict(query, values))

    async def close(self) -> None:
        if self.reads is not self:
            await self.reads.close()
        await super().close()


def in_turns(config: str | dict[str, Any]) -> str | dict[str, Any]:
    """A connection's config (a URL, or Tortoise's dict of it) through this backend, for asyncpg and SQLite;
    any other as it is. Not for migrations: Tortoise picks their SQL by the client's module."""
    expanded = expand_db_url(config) if isinstance(config, str) else config
    if expanded["engine"] not in (ASYNCPG, SQLITE):
        return config
    credentials = {**expanded["credentials"], "turns_over": expanded["engine"]}
    return {**expanded, "engine": __name__, "credentials": credentials}


def get_client_class(db_info: dict[str, Any]) -> type[Any]:
    """Tortoise's hook for a backend: the fair client of the engine the config names."""
    return FairAsyncpgClient if db_info["credentials"]["turns_over"] == ASYNCPG else FairSqliteClient
