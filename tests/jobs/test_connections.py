"""The Redis client every process makes (app/jobs/protocol.py's `connect`), on the test Redis, or on a Redis
server of the module's own (tests/jobs/conftest.py) behind a proxy that loses a reply."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import uuid4

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from app import keys
from app.jobs.producer import ENQUEUE_SCRIPT, enqueue
from app.jobs.protocol import PIXELS_BYTES, REDIS_CONNECTIONS, Job, connect
from app.settings import Settings


async def test_more_commands_at_once_than_connections_wait_for_one(settings: Settings) -> None:
    """Found by bench/hostile_load.py: past 100 commands at once, redis-py's pool raised MaxConnectionsError,
    which the app answers 503 ("a service this depends on is unavailable"): 477 of a flood's 600 uploads got
    it, though each sender kept within its bound of requests open. A command past the pool's connections now
    waits for one."""
    redis = connect(settings.redis_url)
    try:
        nothing, count = f"test-nothing-{uuid4().hex}", REDIS_CONNECTIONS + 20
        # Each holds its connection for 0.2 s: more at once than the pool has.
        waited = await asyncio.gather(*(redis.blpop([nothing], timeout=0.2) for _ in range(count)))
        assert waited == [None] * count
    finally:
        await redis.aclose()


class ReplyCutter:
    """A TCP proxy in front of a Redis server that, once armed, forwards the next command naming `word` and
    cuts the connection instead of passing on its reply: the server ran the command, the client never hears."""

    def __init__(self, socket_file: str, word: bytes) -> None:
        self.socket_file, self.word = socket_file, word
        self.armed = False

    async def serve(self) -> asyncio.Server:
        return await asyncio.start_server(self._client, "127.0.0.1", 0)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_unix_connection(self.socket_file)
        cut = asyncio.Event()

        async def requests() -> None:
            while data := await reader.read(65536):
                if self.armed and self.word in data.upper():
                    self.armed = False
                    cut.set()  # before the command goes on: its reply cannot come first
                up_writer.write(data)
                await up_writer.drain()

        async def replies() -> None:
            while (data := await up_reader.read(65536)) and not cut.is_set():
                writer.write(data)
                await writer.drain()

        tasks = [asyncio.ensure_future(requests()), asyncio.ensure_future(replies())]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        writer.close()
        up_writer.close()


async def test_an_enqueue_whose_reply_is_lost_is_not_sent_again(embedded: Any) -> None:
    """An enqueue adds a job: a client that resent it when the connection failed after Redis ran it would put
    the job on twice, and a worker would classify it twice. A `Redis(host=...)` of redis-py 8 resends a
    command on ConnectionError, 3 times (this test then fails: no error, two jobs); the client `connect`
    makes sends it once, and the caller hears of the failure (the upload answers 503, its row failed)."""
    direct = connect(f"unix://{embedded.socket_file}")
    cutter = ReplyCutter(embedded.socket_file, b"EVALSHA")
    server = await cutter.serve()
    port = server.sockets[0].getsockname()[1]
    proxied = connect(f"redis://127.0.0.1:{port}/0")
    try:
        await direct.flushdb()
        await direct.script_load(ENQUEUE_SCRIPT)  # loaded: the one EVALSHA below is the enqueue itself
        await proxied.ping()
        cutter.armed = True
        with pytest.raises(RedisConnectionError):
            await enqueue(proxied, 7, Job(str(uuid4()), "ab" * 32, "m", bytes(PIXELS_BYTES)))
        assert not cutter.armed  # the reply was cut, after Redis ran the script
        assert await direct.xlen(keys.jobs(7)) == 1
    finally:
        await proxied.aclose()
        await direct.aclose()
        server.close()
