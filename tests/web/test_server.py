"""The app as uvicorn serves it: a request head past the bound is cut off with 431, bodies are not heads."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from urllib.parse import urlsplit

import httpx

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
