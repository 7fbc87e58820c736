"""With no internet: the pages load htmx from the app's own copy when its CDN does not answer, and the API docs
(Swagger UI) render from the app's assets alone. Chromium reaches nothing but the app: every other request is
aborted, or, to stand for a CDN that works, answered with the same file."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.async_api import Browser, Page, Route, expect
from redis.asyncio import Redis

from app.settings import Settings
from tests.conftest import TMP
from tests.live import live_server

pytestmark = pytest.mark.e2e

HTMX_FIELDS = Settings.__pydantic_fields__  # type: ignore[attr-defined]
CDN_URL: str = HTMX_FIELDS["htmx_url"].default
CDN_INTEGRITY: str = HTMX_FIELDS["htmx_integrity"].default
LOCAL_HTMX = "/static/vendor/htmx.min.js"
VENDORED = Path(__file__).resolve().parents[3] / "static" / "vendor" / "htmx.min.js"


@pytest.fixture(scope="module")
def cdn_site(migrated: None, redis: Redis, local_htmx: None) -> Iterator[str]:
    """The app as deployed: htmx from the pinned CDN URL, checked by its SRI hash."""
    with live_server(TMP / "offline-web.log", HTMX_URL=CDN_URL, HTMX_INTEGRITY=CDN_INTEGRITY) as url:
        yield url


@dataclass
class Offline:
    page: Page
    requested: list[str] = field(default_factory=list)  # paths asked of the app
    errors: list[str] = field(default_factory=list)  # uncaught script errors, anything the CSP blocked


async def offline(browser: Browser, base_url: str, cdn_works: bool) -> AsyncIterator[Offline]:
    context = await browser.new_context(base_url=base_url)
    origin = urlsplit(base_url).netloc

    async def route(route: Route) -> None:
        url = route.request.url
        if urlsplit(url).netloc == origin:
            await route.continue_()
        elif cdn_works and url == CDN_URL:
            # What the CDN serves: the same file, with the CORS header a crossorigin script needs.
            headers = {"content-type": "text/javascript", "access-control-allow-origin": "*"}
            await route.fulfill(status=200, headers=headers, body=VENDORED.read_bytes())
        else:
            await route.abort("internetdisconnected")

    await context.route("**/*", route)
    seen = Offline(await context.new_page())
    seen.page.on("request", lambda request: seen.requested.append(urlsplit(request.url).path))
    seen.page.on("pageerror", lambda error: seen.errors.append(str(error)))
    seen.page.on(
        "console",
        lambda message: seen.errors.append(message.text) if "Content Security Policy" in message.text else None,
    )
    try:
        yield seen
    finally:
        await context.close()


async def htmx_works(page: Page) -> None:
    """htmx is there and swaps: a wrong password comes back into the same document."""
    await page.goto("/login")
    await page.wait_for_function("() => window.htmx && document.body['htmx-internal-data']")
    assert await page.evaluate("() => window.htmx.version") == "2.0.4"
    await page.evaluate("() => (window.__same_document = true)")
    await page.get_by_label("Email").fill("nobody@example.com")
    await page.get_by_label("Password").fill("not the password")
    await page.get_by_role("button", name="Log in").click()
    await expect(page.locator("#password-error")).to_have_text("Wrong email or password")
    assert await page.evaluate("() => window.__same_document === true"), "the page reloaded: htmx did not swap"


async def test_without_the_cdn_htmx_comes_from_the_app(browser: Browser, cdn_site: str) -> None:
    async for seen in offline(browser, cdn_site, cdn_works=False):
        await htmx_works(seen.page)
        assert LOCAL_HTMX in seen.requested
        assert not seen.errors, seen.errors


async def test_with_the_cdn_htmx_comes_from_it_checked(browser: Browser, cdn_site: str) -> None:
    # The CSP allows the pinned URL and the SRI hash matches: the local copy is never asked for.
    async for seen in offline(browser, cdn_site, cdn_works=True):
        await htmx_works(seen.page)
        assert LOCAL_HTMX not in seen.requested
        assert not seen.errors, seen.errors


async def test_the_api_docs_render_offline(browser: Browser, cdn_site: str) -> None:
    async for seen in offline(browser, cdn_site, cdn_works=False):
        await seen.page.goto("/schema")
        await expect(seen.page.locator(".swagger-ui .info .title")).to_contain_text("Image classification service")
        await expect(seen.page.locator(".opblock-summary-path", has_text="/api/predictions").first).to_be_visible()
        await expect(seen.page.locator("button.authorize")).to_be_visible()
        assert not seen.errors, seen.errors
