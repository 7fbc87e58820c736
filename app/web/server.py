"""How uvicorn serves the app: HEAD answered as GET (`HeadAsGet`), and an HTTP protocol that bounds what one
connection may hold. uvicorn's own httptools protocol reads a head of any size (64 MB took seconds and
stalled every other request); this one answers 431 and closes once the head passes MAX_HEAD_BYTES.
uvicorn also keeps a connection that sends nothing, or a head a byte at a time, or a body that stops, for
as long as the client likes, so that such connections, costing their sender nothing, could pile up to the
file descriptor limit; this one closes a head not complete within HEAD_TIMEOUT_S (408) and a body that brings less than
MIN_BODY_BYTES in a BODY_WINDOW_S (a byte now and then held a connection as well as none). A chunked body's
trailer fields, which uvicorn added to the request's headers without end, are dropped, and bounded as a head
is (431). Its access log keeps ACCESS_TARGET_MAX characters of a request's target (`bound_access_log`)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

from litestar.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.web.limits import MAX_HEADER_BYTES

# The request line and the headers; the app itself refuses more than MAX_HEADER_BYTES of headers (431),
# this is the bound on what is read at all.
MAX_HEAD_BYTES = 4 * MAX_HEADER_BYTES
# From a connection's opening, or a request's first byte, to the end of its head: a browser sends its head
# at once, in one packet or a few.
HEAD_TIMEOUT_S = 20.0
# While the app waits for a body, each BODY_WINDOW_S must bring MIN_BODY_BYTES of it: about 1 kB/s, what
# the slowest mobile link carries (nginx's client_body_timeout is 60 s of nothing at all).
BODY_WINDOW_S = 60.0
MIN_BODY_BYTES = 64 * 1024
# Characters of a request's target (path and query) an access log line keeps: uvicorn wrote it as sent, so
# one request up to MAX_HEAD_BYTES wrote a line as long.
ACCESS_TARGET_MAX = 2_000
TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s"
)
TOO_LARGE_BODY = b'{"status_code":431,"detail":"The request headers are too large"}'
TOO_SLOW = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s"
)
TOO_SLOW_BODY = b'{"status_code":408,"detail":"The request head did not arrive in time"}'


class BoundedHttpTools(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._in_body = False
        # A chunk header came and no chunk data since: it was the last chunk's (size 0), trailers follow.
        self._in_trailers = False
        # A head or a trailer section began in the read being parsed: that read's bytes are not all its own
        # (a pipelined head follows a body), so counting starts with the next read: the bound is
        # MAX_HEAD_BYTES and one read.
        self._began_in_read = False
        self._head_bytes = self._window_bytes = 0
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._time(HEAD_TIMEOUT_S)  # a connection that never sends its head

    def connection_lost(self, exc: Exception | None) -> None:
        self._time(None)
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._in_trailers, self._head_bytes, self._began_in_read = True, False, 0, True
        if self._timer is None:  # else the connection's first head: its time runs from the opening
            self._time(HEAD_TIMEOUT_S)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_head:  # not a trailer field: the app reads none
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head, self._in_body, self._window_bytes = False, True, 0
        self._time(BODY_WINDOW_S)
        super().on_headers_complete()

    def on_chunk_header(self) -> None:  # httptools calls it, when defined, at each chunk's size line
        self._in_trailers, self._head_bytes, self._began_in_read = True, 0, True

    def on_body(self, body: bytes) -> None:
        self._in_trailers = False  # the chunk had data: not the last
        self._window_bytes += len(body)  # body only: trailers or chunk extensions are no progress
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._in_body = self._in_trailers = False
        self._time(None)
        super().on_message_complete()

    def data_received(self, data: bytes) -> None:
        self._began_in_read = False
        super().data_received(data)
        # Still in a head or trailers after parsing this read, begun before it: all of it was theirs.
        if (self._in_head or self._in_trailers) and not self._began_in_read and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                cycle = self.cycle  # the previous request's, in a head; this one's, in trailers
                if cycle is None or not cycle.response_started or cycle.response_complete:  # not cut into
                    self.transport.write(TOO_LARGE % (len(TOO_LARGE_BODY), TOO_LARGE_BODY))
                self.transport.close()

    def _time(self, seconds: float | None) -> None:
        """Close the connection in `seconds` unless timed again first (None: no more)."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None if seconds is None else self.loop.call_later(seconds, self._out_of_time)

    def _out_of_time(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self._in_body:
            cycle = self.cycle
            # Enough came, or the slowness is not the client's: the app is not reading (uvicorn stopped
            # reading for it), or the client waits for the 100 Continue that the app's first read sends.
            waiting = self.flow.read_paused or (cycle is not None and cycle.waiting_for_100_continue)
            if waiting or self._window_bytes >= MIN_BODY_BYTES:
                self._window_bytes = 0
                self._time(BODY_WINDOW_S)
                return
        elif self._in_head and self.cycle is not None and not self.cycle.response_complete:
            # A head begun while the previous response is pending: its time runs on, from that response's end
            # at the latest (uvicorn's keep-alive timer is gone with the head's first byte).
            self._time(HEAD_TIMEOUT_S)
            return
        elif self._in_head:
            self.transport.write(TOO_SLOW % (len(TOO_SLOW_BODY), TOO_SLOW_BODY))
        else:
            return  # between requests: uvicorn's keep-alive timeout closes an idle connection
        self.transport.close()


class HeadAsGet:
    """ASGI: a HEAD request is answered as its GET would be, without the body (RFC 9110 wants HEAD wherever
    GET works). Litestar's routing answered it 405, before any of its middleware, and an uptime monitor that
    sends HEAD took the service for down."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headless(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = cast("Message", {**message, "body": b""})
            await send(message)

        await self.app(cast("Scope", {**scope, "method": "GET"}), receive, headless)


class CutAccessTarget(logging.Filter):
    """Cuts the target in uvicorn's access log record, whose args are (client, method, target, HTTP version,
    status) in uvicorn 0.x, to ACCESS_TARGET_MAX characters and says how many went."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str):
            target = args[2]
            if len(target) > ACCESS_TARGET_MAX:
                cut = f"{target[:ACCESS_TARGET_MAX]}...[{len(target) - ACCESS_TARGET_MAX} characters cut]"
                record.args = (*args[:2], cut, *args[3:])
        return True


def bound_access_log() -> None:
    """Install `CutAccessTarget` on uvicorn's access logger, once per process."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, CutAccessTarget) for f in access.filters):
        access.addFilter(CutAccessTarget())
