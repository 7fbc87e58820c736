"""How uvicorn serves the app: its command line, and an HTTP protocol that stops reading a request's head
past a bound. uvicorn's own httptools protocol reads a head of any size (64 MB took seconds and stalled
every other request); this one answers 431 and closes once the head passes MAX_HEAD_BYTES."""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.web.limits import MAX_HEADER_BYTES

# The request line and the headers; the app itself refuses more than MAX_HEADER_BYTES of headers (431),
# this is the bound on what is read at all.
MAX_HEAD_BYTES = 4 * MAX_HEADER_BYTES
TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s"
)
TOO_LARGE_BODY = b'{"status_code":431,"detail":"The request headers are too large"}'


class BoundedHttpTools(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_bytes = 0

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_bytes = True, 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # Still in the head after parsing this chunk: all of it was head.
        if self._in_head and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self.transport.write(TOO_LARGE % (len(TOO_LARGE_BODY), TOO_LARGE_BODY))
                self.transport.close()
