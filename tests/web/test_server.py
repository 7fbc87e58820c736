"""The app as uvicorn serves it: a request head past the bound is cut off with 431, bodies are not heads, an
idle connection outlives a client's pause, and a head or a body that does not come in time is cut off."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn
from litestar import Litestar

from app.run import UVICORN_ARGS
from app.web import server
from app.web.server import MAX_HEAD_BYTES, BoundedHttpTools
from tests.live import free_port, live_server


def send_head(url: str, size: int) -> tuple[int, bytes]:
    """A request whose one header is `size` bytes: how much of it got sent before the server closed the
    connection, and what it answered."""
    parts = urlsplit(url)
    sent = 0
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        try:
            sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Big: ")
            while sent < size:
                sock.sendall(b"a" * 65_536)
                sent += 65_536
            sock.sendall(b"\r\n\r\n")
        except OSError:  # the server stopped reading and closed
            pass
        try:
            return sent, sock.recv(200)
        except OSError:  # a reset may swallow the reply
            return sent, b""


async def test_an_oversized_head_is_cut_off_and_others_go_on(tmp_path: Path, migrated: None) -> None:
    with live_server(tmp_path / "web.log") as url:
        sent, reply = await asyncio.to_thread(send_head, url, 32 << 20)
        assert sent < 32 << 20, "the server read the whole 32 MB head"
        assert reply.startswith(b"HTTP/1.1 431") or not reply
        assert (await asyncio.to_thread(httpx.get, f"{url}/health/live")).status_code == 200
        # Headers under the read bound but over the app's own: the app's 431, in the one error shape.
        big = await asyncio.to_thread(httpx.get, f"{url}/health/live", headers={"x-big": "a" * (MAX_HEAD_BYTES // 2)})
        assert big.status_code == 431 and big.json()["status_code"] == 431
        # A large body is not a large head.
        body = b"{" + b'"a":1,' * 100_000 + b'"b":1}'
        posted = await asyncio.to_thread(
            httpx.post, f"{url}/api/auth/login", content=body, headers={"content-type": "application/json"}
        )
        assert posted.status_code == 400


def two_requests(url: str, pause: float) -> int:
    """Two requests on one kept-alive connection, `pause` seconds apart: the second's status."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        connection.request("GET", "/health/live")
        connection.getresponse().read()
        time.sleep(pause)
        connection.request("GET", "/health/live")
        return connection.getresponse().status
    finally:
        connection.close()


async def test_a_connection_idle_longer_than_uvicorns_default_still_serves(tmp_path: Path, migrated: None) -> None:
    # uvicorn's default keeps an idle connection 5 s: a client pausing that long lost its next request.
    assert UVICORN_ARGS[UVICORN_ARGS.index("--timeout-keep-alive") + 1] == "65"
    dockerfile = (Path(__file__).parents[2] / "Dockerfile").read_text()
    web_command = json.loads(next(line for line in dockerfile.splitlines() if line.startswith('CMD ["uvicorn"'))[4:])
    assert web_command[1 : 1 + len(UVICORN_ARGS)] == UVICORN_ARGS  # the image serves as `make run` does
    with live_server(tmp_path / "web.log") as url:
        assert await asyncio.to_thread(two_requests, url, 6.0) == 200


@contextlib.asynccontextmanager
async def served_here(app: Litestar) -> AsyncIterator[int]:
    """The running app, served by uvicorn with the app's protocol in this process (so that its time limits
    can be made short): its port."""
    config = uvicorn.Config(app, port=free_port(), http=BoundedHttpTools, lifespan="off", log_level="warning")
    serving = uvicorn.Server(config)
    task = asyncio.create_task(serving.serve())
    while not serving.started:
        assert not task.done(), task.result()
        await asyncio.sleep(0.01)
    try:
        yield config.port
    finally:
        serving.should_exit = True
        await task


async def answer_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """All the server sends until it closes the connection, which it must within `seconds`."""
    return await asyncio.wait_for(reader.read(), seconds)


async def test_a_head_or_a_body_that_does_not_come_in_time_is_cut_off(
    app: Litestar, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """uvicorn kept a connection that sent nothing, or its head a byte at a time, or stopped its body or
    sent it a byte now and then, for as long as the client liked: such connections, costing their sender
    nothing, could pile up to the file descriptor limit."""
    monkeypatch.setattr(server, "HEAD_TIMEOUT_S", 1.0)
    monkeypatch.setattr(server, "BODY_WINDOW_S", 1.0)
    monkeypatch.setattr(server, "MIN_BODY_BYTES", 16)
    async with served_here(app) as port:
        silent = await asyncio.open_connection("127.0.0.1", port)
        trickled = await asyncio.open_connection("127.0.0.1", port)
        stopped = await asyncio.open_connection("127.0.0.1", port)
        steady = await asyncio.open_connection("127.0.0.1", port)
        dripped = await asyncio.open_connection("127.0.0.1", port)
        stopped[1].write(b"POST /api/auth/login HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n")
        stopped[1].write(b"content-length: 100\r\n\r\n{")
        steady[1].write(b"POST /api/auth/login HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n")
        steady[1].write(b"content-length: 40\r\nconnection: close\r\n\r\n")
        dripped[1].write(b"POST /api/auth/login HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n")
        dripped[1].write(b"content-length: 400\r\n\r\n")
        body = b'{"email": "a@b.c", "password": "xy"}'.ljust(40)

        async def trickle_head() -> None:
            for byte in b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
                trickled[1].write(bytes([byte]))
                await asyncio.sleep(0.1)

        async def send_body_slowly() -> None:  # 8 bytes every 0.3 s: 26 a second, past the 16 asked
            for n in range(0, 40, 8):
                steady[1].write(body[n : n + 8])
                await asyncio.sleep(0.3)

        async def drip_body() -> None:  # 2 bytes every 0.2 s: 10 a second, never a pause of a second
            for _ in range(200):
                dripped[1].write(b"  ")
                await asyncio.sleep(0.2)

        sending = [asyncio.create_task(job()) for job in (trickle_head, send_body_slowly, drip_body)]
        assert (await answer_within(silent[0], 5)).startswith(b"HTTP/1.1 408")
        assert (await answer_within(trickled[0], 5)).startswith(b"HTTP/1.1 408")  # though it kept sending
        assert await answer_within(stopped[0], 5) == b""  # cut off mid-body: the app had nothing to answer
        assert await answer_within(dripped[0], 5) == b""  # though it kept sending
        assert (await answer_within(steady[0], 10)).startswith(b"HTTP/1.1 401")  # read whole, and answered
        for task in sending:
            task.cancel()
        fine = await asyncio.to_thread(httpx.get, f"http://127.0.0.1:{port}/health/live")
        assert fine.status_code == 200
        assert "unhandled error" not in caplog.text  # a body cut off is the client's doing, not a bug
        for _, writer in (silent, trickled, stopped, steady, dripped):
            writer.close()
