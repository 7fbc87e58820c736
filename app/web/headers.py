"""Headers every response carries for the browser's side of safety: a Content Security Policy that lets only
the app's own scripts and the one pinned htmx file run (the API docs too: Swagger UI is served by the app,
app/web/apidocs.py), no framing, no sniffing, a strict referrer, and HSTS over https."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from litestar.datastructures import MutableScopeHeaders
from litestar.types import Message, Scope

from app.settings import Settings

HSTS = "max-age=31536000; includeSubDomains"


def content_security_policy(htmx_url: str) -> str:
    """Scripts: our own, and htmx from exactly the pinned URL when it comes from a CDN. Styles allow inline
    `style` attributes (the templates' meters) and the one `<style>` htmx adds for its indicators."""
    scripts = "'self'" + (f" {htmx_url}" if urlsplit(htmx_url).scheme else "")
    return "; ".join(
        [
            "default-src 'self'",
            f"script-src {scripts}",
            "style-src 'self' 'unsafe-inline'",
            "img-src 'self' data: blob:",
            "connect-src 'self'",
            "object-src 'none'",
            "base-uri 'self'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


def security_headers(settings: Settings) -> Callable[[Message, Scope], Awaitable[None]]:
    """A `before_send` hook adding the headers to every response, errors and unknown paths included."""
    policy = content_security_policy(settings.htmx_url)

    async def add(message: Message, scope: Scope) -> None:
        if message["type"] != "http.response.start":
            return
        headers = MutableScopeHeaders.from_message(message)
        headers["X-Content-Type-Options"] = "nosniff"
        headers["X-Frame-Options"] = "DENY"
        headers["Referrer-Policy"] = "same-origin"
        headers["Content-Security-Policy"] = policy
        if scope.get("scheme") == "https":
            headers["Strict-Transport-Security"] = HSTS

    return add
