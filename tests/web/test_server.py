"""The app as uvicorn serves it: a request head past the bound is cut off with 431, bodies are not heads, and
an idle connection outlives a client's pause."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from app.run import UVICORN_ARGS
from app.web.server import MAX_HEAD_BYTES
from tests.live import live_server


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
