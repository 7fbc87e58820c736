"""The app over real HTTP (uvicorn in a subprocess) with a real worker process, and headless Chromium from
the system (Debian's `chromium` package) driven by Playwright: nothing downloads a browser. Without Chromium
every test here is skipped, a skip the run allows unless REQUIRE_BROWSER=1 (tests/skips.py)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, async_playwright, expect
from redis.asyncio import Redis

from app.jobs.producer import live_workers
from tests.conftest import TMP
from tests.live import live_server
from tests.skips import skip_without_browser

ROOT = Path(__file__).resolve().parents[3]
SCREENSHOTS = ROOT / "docs" / "screenshots"
HTMX_LOCAL = ROOT / "static" / "vendor" / "htmx.min.js"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WORKER_START_SECONDS = 180  # TensorFlow import, model build and warm-up
# An assertion waits up to 30 s for what it expects, not Playwright's 5 s: on a stalled machine (CI's 2 cores
# shared) a page may take seconds to show what it shows at once here. It passes as soon as that is shown.
expect.set_options(timeout=30_000)


@pytest.fixture(scope="session", autouse=True)
def chromium_path() -> str:
    """CHROMIUM_PATH, else `chromium` on the PATH. Autouse: without it, every test here is skipped before
    anything starts a server."""
    path = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or ""
    if not path or not Path(path).exists():
        where = f"none at {path}" if path else "none on the PATH"
        skip_without_browser(f"{where} (`apt-get install chromium` on Debian, or set CHROMIUM_PATH)")
    return path


@pytest.fixture(scope="session")
def local_htmx() -> None:
    # The tests load htmx from the local copy (HTMX_URL, see tests/conftest.py), never from the CDN.
    if not HTMX_LOCAL.exists():
        pytest.fail(f"{HTMX_LOCAL.relative_to(ROOT)} is missing: it is part of the repository")


@pytest.fixture(scope="module")
def live_url(migrated: None, redis: Redis, local_htmx: None) -> Iterator[str]:
    """The web app on a free port, with this test session's database, Redis and settings."""
    with live_server(TMP / "e2e-web.log") as url:
        yield url


@pytest.fixture(scope="module")
async def worker_process(live_url: str, redis: Redis) -> AsyncIterator[asyncio.subprocess.Process]:
    """`python -m app.worker`, as in production; stopped (SIGTERM, a clean drain) after the module."""
    log = TMP / "e2e-worker.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "app.worker",
            env=os.environ | {"WORKER_NAME": "e2e-worker"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + WORKER_START_SECONDS
        while not any(w.name == "e2e-worker" for w in await live_workers(redis)):
            if process.returncode is not None or time.monotonic() > deadline:
                pytest.fail(f"the worker did not start:\n{log.read_text()[-3000:]}")
            await asyncio.sleep(0.25)
        yield process
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()


@pytest.fixture(scope="module")
async def browser(chromium_path: str) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS, headless=True)
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture(scope="session")
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS
