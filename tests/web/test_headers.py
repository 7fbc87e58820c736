"""Every response carries the browser-side safety headers: CSP, no framing, nosniff, referrer, HSTS on https."""

from __future__ import annotations

import httpx
import pytest
from litestar import Litestar

from app.web.headers import content_security_policy


def directives(policy: str) -> dict[str, str]:
    return {name: value for name, _, value in (part.strip().partition(" ") for part in policy.split(";"))}


@pytest.mark.parametrize(
    "path", ["/", "/login", "/api/labels?q=cat", "/no/such/page", "/static/css/app.css", "/schema", "/schema/swagger"]
)
async def test_every_response_carries_the_headers(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "same-origin"
    policy = directives(response.headers["Content-Security-Policy"])
    assert policy["frame-ancestors"] == "'none'" and policy["object-src"] == "'none'"
    assert policy["script-src"] == "'self'"  # the tests serve htmx locally: nothing else may run
    assert "Strict-Transport-Security" not in response.headers  # plain http here


def test_the_pinned_cdn_file_is_the_only_other_script() -> None:
    url = "https://unpkg.com/htmx.org@2.0.4/dist/htmx.min.js"
    assert directives(content_security_policy(url))["script-src"] == f"'self' {url}"


async def test_hsts_over_https(app: Litestar, client: httpx.AsyncClient) -> None:
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50003))  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as secure:
        response = await secure.get("/login")
    assert response.headers["Strict-Transport-Security"].startswith("max-age=31536000")
