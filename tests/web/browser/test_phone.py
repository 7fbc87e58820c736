"""On a phone (390 by 844): the result comes into view after classifying, with and without JavaScript, and no
page is wider than the screen. While no worker is alive the classify page waits and follows the image by
itself, with and without JavaScript; a collection's page reloads itself without JavaScript."""

from __future__ import annotations

import asyncio
import signal
from asyncio.subprocess import Process
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from playwright.async_api import Browser, Locator, Page, expect
from redis.asyncio import Redis

from app.jobs.producer import live_workers
from app.settings import Settings
from tests.helpers import eventually, forget_worker, status_of
from tests.web.browser.test_browser import (
    LABEL_NAMES,
    PHONE,
    chosen_files,
    classify,
    images_loaded,
    log_in,
    scenery,
    sign_up,
)

JS_OFF = {"java_script_enabled": False}


@asynccontextmanager
async def phone(browser: Browser, live_url: str, **options: Any) -> AsyncIterator[Page]:
    """A page on a phone in a fresh context, failing the test on a script error or a CSP violation (as
    test_browser.new_page, on a desktop)."""
    context = await browser.new_context(
        base_url=live_url, viewport=PHONE, device_scale_factor=2, is_mobile=True, has_touch=True, **options
    )
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None)
    try:
        yield page
    finally:
        await context.close()
    assert not errors, f"script errors: {errors}"


async def in_viewport(locator: Locator) -> bool:
    return bool(
        await locator.evaluate(
            "e => { const r = e.getBoundingClientRect(); return r.top >= 0 && r.bottom <= window.innerHeight; }"
        )
    )


# The outermost elements that stick out past the screen's right edge, to say what is too wide.
WIDE_ELEMENTS = """() => {
  const limit = document.documentElement.clientWidth;
  const out = [...document.querySelectorAll("body *")].filter(e => e.getBoundingClientRect().right > limit + 1);
  return out.filter(e => !out.includes(e.parentElement)).slice(0, 5)
    .map(e => e.tagName.toLowerCase() + (e.id ? "#" + e.id : "") + (e.className ? "." + e.className : ""));
}"""


async def fits(page: Page) -> None:
    """Nothing wider than the screen: no sideways scrolling of the whole page (wide tables scroll inside)."""
    # Every image loaded or given up on (other tests' predictions, made in the database, have no image), but
    # lazy ones out of sight, which never load: they are sized by their attributes.
    await page.wait_for_function("() => [...document.images].every(i => i.complete || i.loading === 'lazy')")
    widths = await page.evaluate("() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    if widths[0] > widths[1]:
        wide = await page.evaluate(WIDE_ELEMENTS)
        pytest.fail(f"{page.url} is {widths[0]} px wide on a {widths[1]} px screen; too wide: {wide}")


async def classify_without_js(page: Page, data: bytes, name: str) -> None:
    await page.locator("#file").set_input_files({"name": name, "mimeType": "image/jpeg", "buffer": data})
    await page.get_by_role("button", name="Classify").click()
    await page.wait_for_load_state()


async def test_on_a_phone_the_result_is_in_view_and_no_page_is_too_wide(
    browser: Browser, live_url: str, worker_process: Process, settings: Settings
) -> None:
    async with phone(browser, live_url) as page:
        for path in ("/login", "/register"):
            await page.goto(path)
            await fits(page)
        await sign_up(page, live_url)
        await fits(page)
        label = await classify(page, scenery(21, size=(480, 720)), "portrait.jpg")  # a tall image above the label
        heading = page.locator("#result h2")
        assert label in LABEL_NAMES
        await expect(heading).to_be_focused()
        await images_loaded(page)
        assert await in_viewport(heading), "the result's heading is out of sight"
        assert await page.evaluate("() => window.scrollY") > 0  # it was below the form: the page scrolled to it
        await fits(page)
        # A second one, the form scrolled back into view first, as a person would.
        await page.evaluate("() => window.scrollTo(0, 0)")
        await classify(page, scenery(22), "second.jpg")
        await expect(page.locator("#result figcaption")).to_have_text("second.jpg", timeout=30_000)
        await images_loaded(page)
        assert await in_viewport(heading)

        await page.goto("/history")
        await fits(page)
        await page.locator(".history-item").first.click()
        await page.wait_for_url("**/predictions/*")
        await fits(page)

        await page.goto("/")
        await page.locator("#file").set_input_files(chosen_files(3, 70))
        await page.get_by_role("button", name="Classify all").click()
        await page.wait_for_url("**/collections/*")
        await expect(page.locator("#collection-progress")).to_contain_text("All 4 finished", timeout=60_000)
        await expect(page.get_by_text("Untrained model.")).to_be_visible()  # there from the first, empty, page
        await fits(page)

    async with phone(browser, live_url) as page:
        await log_in(page, settings.admin_email, settings.admin_password, then="/admin")
        await expect(page.locator("#status")).to_contain_text("e2e-worker")
        await fits(page)
        await page.goto("/admin/feedback")
        await fits(page)


async def test_on_a_phone_without_javascript_the_answer_opens_at_the_result(
    browser: Browser, live_url: str, worker_process: Process
) -> None:
    async with phone(browser, live_url, **JS_OFF) as page:
        await sign_up(page, live_url)
        await classify_without_js(page, scenery(23, size=(480, 720)), "plain-portrait.jpg")
        heading = page.locator("#result h2")
        assert (await heading.inner_text()).strip() in LABEL_NAMES
        await images_loaded(page)
        assert await in_viewport(heading), "the result's heading is out of sight"
        await fits(page)


@asynccontextmanager
async def no_live_worker(worker: Process, redis: Redis) -> AsyncIterator[None]:
    """The worker paused, its heartbeat gone as at its expiry (not waited for: HEARTBEAT_TTL): to the web app,
    no worker is alive (as in the first seconds after `make run`). It carries on where it was when the block
    ends, and beats again."""
    worker.send_signal(signal.SIGSTOP)
    try:

        async def stopped() -> bool:  # SIGSTOP takes effect once the process next runs: a beat may come first
            return status_of(worker.pid)["State"].split()[0] == "T"

        await eventually(stopped, what="the worker to stop")
        await forget_worker(redis, "e2e-worker")
        assert not await live_workers(redis), "the paused worker still looks alive"
        yield
    finally:
        worker.send_signal(signal.SIGCONT)


async def test_while_no_worker_is_alive_the_page_waits_and_follows_the_image(
    browser: Browser, live_url: str, worker_process: Process, redis: Redis
) -> None:
    async with phone(browser, live_url) as page, phone(browser, live_url, **JS_OFF) as plain:
        await sign_up(page, live_url)
        await sign_up(plain, live_url)
        await page.locator("#file").set_input_files(
            {"name": "early.jpg", "mimeType": "image/jpeg", "buffer": scenery(24)}
        )
        async with no_live_worker(worker_process, redis):
            await page.get_by_role("button", name="Classify").click()
            heading = page.locator("#result h2")
            await expect(heading).to_have_text("Warming up…")
            await expect(page.locator("#result")).to_contain_text("your image will be classified in a moment")
            await expect(page.locator("#result")).not_to_contain_text("app.worker")
            await expect(heading).to_be_focused()
            assert await in_viewport(heading)

            await classify_without_js(plain, scenery(25), "early-plain.jpg")
            await expect(plain.locator("#result h2")).to_have_text("Warming up…")
            await expect(plain.locator("#result")).to_contain_text("This page checks again by itself")
        # Once the worker is back, both pages show the result without anyone doing anything.
        await expect(heading).not_to_have_text("Warming up…", timeout=30_000)
        await expect(heading).not_to_have_text("Classifying…", timeout=30_000)
        assert (await heading.inner_text()).strip() in LABEL_NAMES
        await plain.wait_for_url("**/predictions/*", timeout=15_000)  # the waiting image's own page
        plain_heading = plain.locator("#result h2")
        await expect(plain_heading).not_to_have_text("Warming up…", timeout=30_000)
        await expect(plain_heading).not_to_have_text("Classifying…", timeout=30_000)
        assert (await plain_heading.inner_text()).strip() in LABEL_NAMES


async def test_a_collection_page_reloads_itself_without_javascript(
    browser: Browser, live_url: str, worker_process: Process
) -> None:
    async with phone(browser, live_url, **JS_OFF) as page:
        await sign_up(page, live_url)
        await page.locator("#file").set_input_files(chosen_files(3, 80))
        worker_process.send_signal(signal.SIGSTOP)  # so that the page is seen while its images wait
        try:
            await page.get_by_role("button", name="Classify").click()
            await page.wait_for_url("**/collections/*")
            await expect(page.locator("#collection-progress")).to_contain_text("3 waiting", timeout=30_000)
            loads: list[str] = []
            page.on("load", lambda loaded: loads.append(loaded.url))
        finally:
            worker_process.send_signal(signal.SIGCONT)
        # Nothing is clicked: the page reloads itself (a meta refresh) until every image is done, then stops.
        await expect(page.locator("#collection-progress")).to_contain_text("All 4 finished", timeout=60_000)
        assert loads, "the page never reloaded"
        settled = len(loads)
        await asyncio.sleep(5)
        assert len(loads) == settled, "the page kept reloading after the images were done"
        await fits(page)
