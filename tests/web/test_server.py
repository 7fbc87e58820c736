"""The app as uvicorn serves it: a request head past the bound is cut off with 431, bodies are not heads, an
idle connection outlives a client's pause, and a head or a body that does not come in time is cut off; and the
protocol alone, read by read: trailers are dropped and bounded, a head behind a pending response has its time,
and a head pipelined after a large body is not counted with it."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import re
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn
from litestar import Litestar
from uvicorn.server import ServerState

from app.run import UVICORN_ARGS
from app.web import server
from app.web.limits import MAX_JSON_BYTES
from app.web.server import ACCESS_TARGET_MAX, MAX_HEAD_BYTES, BoundedHttpTools
from tests.helpers import eventually
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
        # A large body is not a large head: over the head's bound, under the JSON body's (MAX_JSON_BYTES).
        body = b"{" + b'"a":1,' * (MAX_HEAD_BYTES // 4) + b'"b":1}'
        assert MAX_HEAD_BYTES < len(body) < MAX_JSON_BYTES
        posted = await asyncio.to_thread(
            httpx.post, f"{url}/api/auth/login", content=body, headers={"content-type": "application/json"}
        )
        assert posted.status_code == 400


def head_then_get(url: str, path: str) -> tuple[http.client.HTTPResponse, bytes, http.client.HTTPResponse, bytes]:
    """HEAD then GET of `path` on one kept-alive connection: each response and its body."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        connection.request("HEAD", path)
        head = connection.getresponse()
        head_body = head.read()
        connection.request("GET", path)
        get = connection.getresponse()
        return head, head_body, get, get.read()
    finally:
        connection.close()


async def test_head_is_answered_as_get_without_the_body(tmp_path: Path, migrated: None) -> None:
    """Found in review: HEAD answered 405 on every route (Litestar's routing, before any middleware), so an
    uptime monitor that sends HEAD took the service for down."""
    with live_server(tmp_path / "web.log") as url:
        for path, status in (("/health/live", 200), ("/login", 200), ("/api/users/me", 401)):
            head, head_body, get, body = await asyncio.to_thread(head_then_get, url, path)
            assert (head.status, get.status, head_body) == (status, status, b"")
            assert head.getheader("content-type") == get.getheader("content-type")
        assert head.getheader("content-length") == str(len(body))
        posted = await asyncio.to_thread(httpx.post, f"{url}/health/live")
        assert posted.status_code == 405  # other methods are still the routes' own


async def test_an_access_log_line_keeps_a_bounded_part_of_a_long_target(tmp_path: Path, migrated: None) -> None:
    """Found in review: uvicorn's access log wrote each request's target as sent, so one request with a 60 kB
    query wrote a 60 kB line, as many of them as the client liked. A line keeps ACCESS_TARGET_MAX characters
    of it and says how many it cut; the app refuses such a target (414) before any handler reads it."""
    log = tmp_path / "web.log"
    target = "/health/live?q=" + "a" * 60_000
    with live_server(log) as url:
        long = await asyncio.to_thread(httpx.get, f"{url}{target}")
        short = await asyncio.to_thread(httpx.get, f"{url}/health/live?q=after")

        async def logged() -> bool:
            return "/health/live?q=after" in log.read_text()

        await eventually(logged, seconds=30, what="the access log line")
    line = next(line for line in log.read_text().splitlines() if "/health/live?q=aaa" in line)
    assert len(line) < ACCESS_TARGET_MAX + 200, len(line)
    assert f"[{len(target) - ACCESS_TARGET_MAX} characters cut]" in line, line[-200:]
    assert (long.status_code, long.json()["status_code"], short.status_code) == (414, 414, 200)


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


class Pipe(asyncio.Transport):
    """The protocol's end of a connection, with no socket: each data_received is one read, as the test
    chooses, and what the protocol writes is kept."""

    def __init__(self, protocol: asyncio.Protocol) -> None:
        super().__init__()
        self.protocol, self.sent, self.closed = protocol, b"", False
        self.wrote, self.closing = asyncio.Event(), asyncio.Event()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.sent += bytes(data)
        self.wrote.set()

    def close(self) -> None:
        if not self.closed:
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)
        self.closed = True
        self.closing.set()

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def echo_app(release: asyncio.Event | None = None) -> Callable[..., Any]:
    """An app that reads the whole body and answers how many headers and body bytes it got; /slow answers
    only once `release` is set."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        size, message = 0, {"more_body": True}
        while message.get("more_body"):
            message = await receive()
            size += len(message.get("body", b""))
        if scope["path"] == "/slow" and release is not None:
            await release.wait()
        body = b"%d headers, %d bytes" % (len(scope["headers"]), size)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})

    return app


@contextlib.asynccontextmanager
async def connected(app: Callable[..., Any]) -> AsyncIterator[tuple[BoundedHttpTools, Pipe]]:
    config = uvicorn.Config(app, http=BoundedHttpTools, lifespan="off", log_level="warning")
    protocol = BoundedHttpTools(config=config, server_state=ServerState(), app_state={})
    pipe = Pipe(protocol)
    protocol.connection_made(pipe)
    try:
        yield protocol, pipe
    finally:
        pipe.close()
        await asyncio.sleep(0)


async def closed_with(pipe: Pipe, seconds: float = 5) -> list[bytes]:
    """The statuses written once the protocol closes the connection, which it must within `seconds`."""
    await asyncio.wait_for(pipe.closing.wait(), seconds)
    return re.findall(rb"HTTP/1.1 (\d+)", pipe.sent)


CHUNKED = b"POST /x HTTP/1.1\r\nHost: x\r\ntransfer-encoding: chunked\r\n\r\n"


async def test_trailers_are_dropped_and_bounded_as_a_head_is(monkeypatch: pytest.MonkeyPatch) -> None:
    """uvicorn added each trailer field (after a chunked body's last chunk) to the request's headers, and
    nothing bounded them: 300 MB of trailers took the server's memory from 120 to 454 MB."""
    monkeypatch.setattr(server, "BODY_WINDOW_S", 0.3)
    monkeypatch.setattr(server, "MIN_BODY_BYTES", 16)
    async with connected(echo_app()) as (protocol, pipe):
        protocol.data_received(CHUNKED + b"2\r\nab\r\n0\r\n")
        protocol.data_received(b"X-T: 1\r\n\r\nGET /y HTTP/1.1\r\nHost: x\r\nconnection: close\r\n\r\n")
        assert await closed_with(pipe) == [b"200", b"200"]
        assert pipe.sent.count(b"2 headers, 2 bytes") == 1  # the trailer is no header
    field, huge = b"X-T: " + b"a" * 1000 + b"\r\n", b"a" * 10_000
    for first, more in ((b"0\r\n", field * 10), (b"0\r\nX-T: ", huge)):  # many fields; one never ending
        async with connected(echo_app()) as (protocol, pipe):
            protocol.data_received(CHUNKED + b"2\r\nab\r\n" + first)
            reads = 0
            while not pipe.closed and reads < 1000:  # 10 MB
                protocol.data_received(more)
                reads += 1
            assert reads * len(more) <= MAX_HEAD_BYTES + len(more)
            assert await closed_with(pipe) == [b"431"]
            assert len(protocol.headers) == 2
    # A large chunked body, its chunk headers at the ends of reads and its last chunk in a large read, is
    # no trailer section.
    async with connected(echo_app()) as (protocol, pipe):
        protocol.data_received(CHUNKED + b"186a0\r\n")  # 100,000 bytes
        for _ in range(5):
            protocol.data_received(b"a" * 100_000 + b"\r\n186a0\r\n")
        protocol.data_received(b"a" * 100_000 + b"\r\n" + (b"186a0\r\n" + b"a" * 100_000 + b"\r\n") * 2 + b"0\r\n")
        protocol.data_received(b"\r\nGET /y HTTP/1.1\r\nHost: x\r\nconnection: close\r\n\r\n")
        assert await closed_with(pipe) == [b"200", b"200"]
        assert b"2 headers, 800000 bytes" in pipe.sent
    # Trailers sent a field now and then are no progress of the body (they kept the connection as long).
    async with connected(echo_app()) as (protocol, pipe):
        protocol.data_received(CHUNKED + b"2\r\nab\r\n0\r\n")
        for _ in range(30):  # 3 s, ten windows
            protocol.data_received(b"X-Trailer: 0123456\r\n")  # 20 bytes in 0.1 s: 60 a window
            await asyncio.sleep(0.1)
            if pipe.closed:
                break
        assert pipe.closed and pipe.sent == b""


async def test_a_head_behind_a_pending_response_still_has_its_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A head begun while the previous response was pending had no time limit at all: a byte a minute held
    the connection for days."""
    monkeypatch.setattr(server, "HEAD_TIMEOUT_S", 0.2)
    release = asyncio.Event()
    async with connected(echo_app(release)) as (protocol, pipe):
        protocol.data_received(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET /x HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        for _ in range(20):  # 1 s, five times HEAD_TIMEOUT_S: the pending response is not cut off
            protocol.data_received(b"a")
            await asyncio.sleep(0.05)
        assert not pipe.closed and pipe.sent == b""
        release.set()

        async def trickle() -> None:
            while not pipe.closed:
                protocol.data_received(b"a")
                await asyncio.sleep(0.05)

        trickling = asyncio.create_task(trickle())
        try:
            assert await closed_with(pipe, 3) == [b"200", b"408"]
        finally:
            trickling.cancel()


async def test_a_head_pipelined_after_a_large_body_is_not_counted_with_it() -> None:
    """A read holding a 100 kB body and the start of the next head counted all as head: a false 431, and the
    first request's answer lost."""
    post = b"POST /x HTTP/1.1\r\nHost: x\r\ncontent-length: 100000\r\n\r\n" + b"a" * 100_000
    async with connected(echo_app()) as (protocol, pipe):
        protocol.data_received(post + b"GET /y HTTP/1.1\r\nHost: x\r\n")
        protocol.data_received(b"connection: close\r\n\r\n")
        assert await closed_with(pipe) == [b"200", b"200"]
    async with connected(echo_app()) as (protocol, pipe):  # a pipelined head too large is cut off still
        protocol.data_received(post + b"GET /y HTTP/1.1\r\nHost: x\r\nX-Big: ")
        while b"100000 bytes" not in pipe.sent:  # the first request answered (else the 431 comes first)
            pipe.wrote.clear()
            await asyncio.wait_for(pipe.wrote.wait(), 5)
        reads = 0
        while not pipe.closed and reads < 1000:
            protocol.data_received(b"a" * 10_000)
            reads += 1
        assert reads * 10_000 <= MAX_HEAD_BYTES + 10_000
        assert await closed_with(pipe) == [b"200", b"431"]
