"""Bounds on what one request may be, checked before any handler runs: header count and size (431), the
target's size (414) and control characters in its path and query (400), JSON size (413) and depth (400), URL-encoded
form size, field count and encoding (413, 400). Other body sizes are Litestar's `request_max_body_size` (see
app/web/app.py); the bytes of all the bodies a process holds at once, `BodyBudget` (503), which also bounds the
requests one sender has open at once (429)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote_to_bytes

from litestar import Request
from litestar.datastructures import FormMultiDict
from litestar.enums import RequestEncodingType
from litestar.exceptions import ClientException, HTTPException
from litestar.plugins.htmx import HTMXRequest
from litestar.status_codes import (
    HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    HTTP_414_REQUEST_URI_TOO_LONG,
    HTTP_431_REQUEST_HEADER_FIELDS_TOO_LARGE,
)
from litestar.types import ASGIApp, Empty, Receive, ReceiveMessage, Scope, Send

from app import db_turns, predictions, quotas
from app.throttles import address_key
from app.web.deps import address_of

MAX_HEADERS = 100
MAX_HEADER_BYTES = 16 * 1024  # names and values together: browsers send 1-3 kB
MAX_TARGET_BYTES = 8 * 1024  # path and query as sent: the app's longest are a page's filters and `next`, 1 kB
MAX_JSON_DEPTH = 32  # every body the API takes is 3 levels deep
# Every JSON body is decoded whole before it is judged, at up to 50 times its size (10 MB of `{},` took 490 MB
# and 6 s of the event loop). The largest the API takes is a lookup of 1,000 hashes: 67 kB.
MAX_JSON_BYTES = 128 * 1024
# The largest form a page sends is feedback: a 1,000-character comment is at most 12 kB percent-encoded.
MAX_FORM_BYTES = 64 * 1024
MAX_FORM_FIELDS = 20  # the pages' forms have at most 6
FORM_TOO_LARGE = f"A form may have at most {MAX_FORM_BYTES // 1024} kB"
# The `opt` key marking a page's form route (`opt={FORM_ROUTE: True}`): its 413 says FORM_TOO_LARGE.
FORM_ROUTE = "form"
# A web process holds at most this many of the largest bodies (a collection's) at once, counted in bytes,
# and besides them room for this many single uploads, which no body larger than one may take: two people
# sending collections a byte now and then (each minute must bring 64 kB) filled it for days otherwise.
LARGEST_BODIES_HELD = 2
UPLOADS_RESERVED = 16
RESERVE_EACH = 2  # of those uploads, one sender's most: a third person's 16 took the room all the same
# Requests from no one signed in (signing in and up) are small: one address holds at most this many of the
# largest those routes take. Normal ones are about 100 bytes, so a proxy's address passes on thousands at once.
ADDRESS_BODIES_HELD = 16
# The requests one sender (and one address) has open at once, whatever their route: each is a socket and a
# coroutine, and 1 kB uploads waiting for a decode turn let one sender hold thousands, up to the process's file
# descriptors. A browser has a few open; `make bench` has 100 Locust users on 10 accounts from one address.
OPEN_EACH = 32
OPEN_PER_NETWORK = 256
UNCOUNTED = ("/health/", "/metrics")  # probes must answer, however busy a sender is
BUSY_RETRY_S = 10
_CONTROL_BYTES = bytes(range(0x20)) + b"\x7f"


def check_headers(headers: list[tuple[bytes, bytes]]) -> None:
    size = sum(len(name) + len(value) for name, value in headers)
    if len(headers) > MAX_HEADERS or size > MAX_HEADER_BYTES:
        raise HTTPException(
            status_code=HTTP_431_REQUEST_HEADER_FIELDS_TOO_LARGE,
            detail=f"Too many or too large headers: at most {MAX_HEADERS} headers and {MAX_HEADER_BYTES} bytes",
        )


def check_target(scope: Scope) -> None:
    """Not past MAX_TARGET_BYTES as sent (the head's bound let 64 kB reach every handler), and no control
    characters in the path or the (decoded) query: they reach file names and the database."""
    path, query = scope["path"].encode("utf-8", "surrogateescape"), scope.get("query_string", b"")
    if len(scope.get("raw_path") or path) + len(query) > MAX_TARGET_BYTES:
        raise HTTPException(
            status_code=HTTP_414_REQUEST_URI_TOO_LONG, detail=f"The address is longer than {MAX_TARGET_BYTES} bytes"
        )
    raw = path + unquote_to_bytes(query)
    if any(byte in _CONTROL_BYTES for byte in raw):
        raise ClientException("The address contains control characters")


class RequestLimits:
    """Middleware: refuse out-of-bounds requests before any handler reads them."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            check_headers(list(scope["headers"]))
            check_target(scope)
        await self.app(scope, receive, send)


@dataclass
class BodiesHeld:
    """The bytes of request bodies a web process holds, in all and by sender, and the most it may (one
    count for the process: Litestar makes a middleware instance per route). A sender is a person signed in,
    or else the address a request came from; and all of an address's requests together (its `Network`) hold
    no more than one person may. Bodies larger than a single upload (`upload`) may hold all but `reserved`
    of the budget."""

    budget: int  # the process's
    share: int  # one person's
    address_share: int  # one address's, of requests from no one signed in
    upload: int = 0  # the largest body of a single upload
    reserved: int = 0  # for bodies no larger than that
    held: int = 0
    large: int = 0  # of it, by bodies larger than `upload`
    by_sender: dict[Hashable, int] = field(default_factory=dict)  # and by network

    def take(self, sender: Person | Address, size: int, before: int = 0, network: Network | None = None) -> None:
        """Count `size` more bytes of `sender`'s (from `network`), of a body that brought `before` bytes so
        far; 429 past a sender's share or its network's, so that no one sender, nor a few accounts of one,
        can fill the budget and crowd everyone else out, and 503 past the process's budget, or past what it
        leaves single uploads for a larger body."""
        share, who = (self.share, "account") if isinstance(sender, Person) else (self.address_share, "address")
        if self.by_sender.get(sender, 0) + size > share:
            raise _too_much(f"You are sending as much at once as one {who} may")
        if network is not None and self.by_sender.get(network, 0) + size > self.share:
            raise _too_much("Your address is sending as much at once as one account may")
        large = size + (before if before <= self.upload else 0) if before + size > self.upload else 0
        into_reserve = self.held + size > self.budget - self.reserved
        if (
            self.held + size > self.budget
            or (large and self.large + large > self.budget - self.reserved)
            or (into_reserve and self.by_sender.get(sender, 0) + size > RESERVE_EACH * self.upload)
        ):
            raise predictions.unavailable(
                "The server is receiving as many uploads as it can hold just now; try again shortly", BUSY_RETRY_S
            )
        self.held += size
        self.large += large
        for holder in (sender, network) if size else ():
            if holder is not None:
                self.by_sender[holder] = self.by_sender.get(holder, 0) + size

    def give_back(self, sender: Person | Address, size: int, network: Network | None = None) -> None:
        """Uncount a whole body of `sender`'s (from `network`), of `size` bytes."""
        self.held -= size
        if size > self.upload:
            self.large -= size
        if size:
            _count_down(self.by_sender, (sender, network), size)


@dataclass
class RequestsOpen:
    """The requests a web process has open, by sender and by network (one count for the process), and the
    most each may."""

    each: int = OPEN_EACH
    per_network: int = OPEN_PER_NETWORK
    by_holder: dict[Hashable, int] = field(default_factory=dict)

    def open(self, sender: Person | Address, network: Network) -> None:
        """Count one more request of `sender`'s, from `network`; 429 past either's bound."""
        if self.by_holder.get(sender, 0) >= self.each:
            raise _too_much("You have as many requests open at once as one sender may")
        if self.by_holder.get(network, 0) >= self.per_network:
            raise _too_much("Your address has as many requests open at once as it may")
        for holder in (sender, network):
            self.by_holder[holder] = self.by_holder.get(holder, 0) + 1

    def close(self, sender: Person | Address, network: Network) -> None:
        _count_down(self.by_holder, (sender, network), 1)


def _count_down(counts: dict[Hashable, int], holders: tuple[Hashable | None, ...], amount: int) -> None:
    """`amount` off each holder's count; a count at 0 is dropped, so the counts hold only senders with some."""
    for holder in holders:
        if holder is not None:
            left = counts.pop(holder) - amount
            if left:
                counts[holder] = left


def _too_much(what: str) -> HTTPException:
    return quotas.too_many(f"{what}; send more once those are answered", BUSY_RETRY_S, {})


@dataclass(frozen=True)
class Person:
    """A sender signed in."""

    id: Hashable


@dataclass(frozen=True)
class Address:
    """A sender not signed in, known by the address its requests come from (`address_key`: an IPv6 host by
    its /64; behind a proxy, everyone's)."""

    host: str


@dataclass(frozen=True)
class Network:
    """Every request from one address (`address_key`), signed in or not: sign-up is open, so one person's
    share per account let a few accounts of one address hold the whole budget."""

    host: str


def senders_of(scope: Scope) -> tuple[Person | Address, Network]:
    """Who sends a request (a person signed in, else its address), and from which network."""
    host = address_key(address_of(scope))
    user = scope.get("user")  # set by the sign-in middleware, which runs before BodyBudget
    return Person(user.id) if user is not None else Address(host), Network(host)


class BodyBudget:
    """Middleware: the bytes of request bodies a web process holds at once, counted as they arrive, bounded
    in all and by sender (`BodiesHeld`); a request past a bound is answered before its body is kept. Each
    request was bounded on its own (`request_max_body_size`), but not all of them together: ten 512 MB
    collections sent at once were all held. Counted as received, not as declared, so a client that declares
    much and sends little holds no room. The requests themselves are counted too (`RequestsOpen`), and their
    database work is their sender's, taken in turns by sender (app/db_turns.py)."""

    def __init__(self, app: ASGIApp, bodies: BodiesHeld, requests: RequestsOpen) -> None:
        self.app = app
        self.bodies = bodies
        self.requests = requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(UNCOUNTED):
            await self.app(scope, receive, send)
            return
        bodies, mine = self.bodies, 0
        sender, network = senders_of(scope)
        self.requests.open(sender, network)

        async def counted() -> ReceiveMessage:
            nonlocal mine
            message = await receive()
            size = len(message.get("body", b"")) if message["type"] == "http.request" else 0
            bodies.take(sender, size, mine, network)
            mine += size
            return message

        try:
            with db_turns.owned_by(sender):  # its queries in turns with everyone else's (app/db_turns.py)
                await self.app(scope, counted, send)
        finally:
            bodies.give_back(sender, mine, network)
            self.requests.close(sender, network)


def parse_form(body: bytes) -> dict[str, str | list[str]]:
    """A URL-encoded form, strictly UTF-8, as Litestar's parser shapes it. That parser reads raw bytes as
    Latin-1 and undecodable escapes as U+FFFD, so a name was stored garbled, and it parses any size: 10 MB
    of `a&` took 4.6 s of the event loop and 440 MB."""
    try:
        pairs = parse_qsl(body.decode(), keep_blank_values=True, errors="strict", max_num_fields=MAX_FORM_FIELDS)
    except UnicodeDecodeError:
        raise ClientException("The form is not valid UTF-8") from None
    except ValueError:
        raise ClientException(f"The form has more than {MAX_FORM_FIELDS} fields") from None
    fields: defaultdict[str, list[str]] = defaultdict(list)
    for name, value in pairs:
        fields[name].append(value)
    return {name: values if len(values) > 1 else values[0] for name, values in fields.items()}


def json_depth(value: Any, limit: int) -> int:
    """How deep `value` nests (a scalar: 0), counting no further than `limit` + 1; no recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack and deepest <= limit:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


class LimitedRequest(HTMXRequest):
    """The request class of the app (HTMX's, which the pages need) with bounds on JSON size and nesting (a
    decoder running out of stack is a bad body, not a server error) and on URL-encoded forms."""

    async def form(self) -> FormMultiDict:
        state = self._connection_state
        if state.form is Empty and self.content_type[0] == RequestEncodingType.URL_ENCODED:
            state.form = parse_form(await self.form_body())  # type: ignore[assignment]
        return await super().form()

    async def form_body(self) -> bytes:
        """The body, refused once it passes MAX_FORM_BYTES rather than after reading all of it: the upload
        routes take 512 MB, and a form sent there is read before any handler (for its CSRF token). One that
        declares more is refused at once, with this answer: Litestar's own limit (1 MB on the sign-in
        routes) would refuse it first, and not say why."""
        too_large = HTTPException(status_code=HTTP_413_REQUEST_ENTITY_TOO_LARGE, detail=FORM_TOO_LARGE)
        if (self.content_length or 0) > MAX_FORM_BYTES:  # Litestar's parse: 400 for a length that is no number
            raise too_large
        chunks, size = [], 0
        async for chunk in self.stream():
            size += len(chunk)
            if size > MAX_FORM_BYTES:
                raise too_large
            chunks.append(chunk)
        self._body = self._connection_state.body = b"".join(chunks)
        return self._body

    async def json(self) -> Any:
        if len(await self.body()) > MAX_JSON_BYTES:
            raise HTTPException(
                status_code=HTTP_413_REQUEST_ENTITY_TOO_LARGE,
                detail=f"A JSON body may have at most {MAX_JSON_BYTES // 1024} kB",
            )
        try:
            value = await super().json()
        except RecursionError:
            raise ClientException(f"The JSON body nests deeper than {MAX_JSON_DEPTH} levels") from None
        if json_depth(value, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
            raise ClientException(f"The JSON body nests deeper than {MAX_JSON_DEPTH} levels")
        return value


async def parse_forms(request: Request[Any, Any, Any]) -> None:
    """The app's before_request: a handler's form body goes through LimitedRequest.form (Litestar's
    extractor would parse it on its own). A body of another type (not multipart) is no form: its form is
    empty, as Litestar's `Request.form` has it. Sent as text/plain, or with no type, to a form's route, the
    extractor parsed it all the same, by the parser `parse_form` replaces: unbounded (on the feedback route,
    10 MB of `a&` took seconds of the event loop) and read as Latin-1."""
    if request.content_type[0] != RequestEncodingType.MULTI_PART:
        await request.form()
