"""The API docs at /schema work with no internet: Swagger UI's page references only the app's own assets,
which it serves, and no inline script, so the site's Content Security Policy holds there too."""

from __future__ import annotations

from html.parser import HTMLParser
from urllib.parse import urlsplit

import httpx
import pytest

CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml", ".png": "image/png"}


class Assets(HTMLParser):
    """Every URL a page loads (scripts, styles, icons, images) and the text of any inline script."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag in ("script", "img", "link") and (found.get("src") or found.get("href")):
            self.urls.append(found.get("src") or found.get("href") or "")
        self._in_script = tag == "script" and not found.get("src")

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_scripts.append(data)


@pytest.mark.parametrize("path", ["/schema", "/schema/swagger"])
async def test_the_docs_page_loads_only_local_assets(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = Assets()
    page.feed(response.text)
    assert not page.inline_scripts  # the CSP allows none (tests/web/test_headers.py: it is there)
    assert len(page.urls) >= 3, page.urls  # Swagger UI's script and style, and the page's own script
    for url in page.urls:
        assert not urlsplit(url).scheme and not urlsplit(url).netloc and url.startswith("/"), url
        asset = await client.get(url)
        assert asset.status_code == 200, url
        expected = CONTENT_TYPES[url[url.rindex(".") :]]
        assert asset.headers["content-type"].split(";")[0] == expected, url
        assert asset.content, url
    scripts = [url for url in page.urls if url.endswith(".js")]
    assert any("swagger-ui-bundle" in url for url in scripts), scripts


async def test_the_docs_page_reads_the_apps_own_schema(client: httpx.AsyncClient) -> None:
    response = await client.get("/schema")
    assert 'data-spec-url="/schema/openapi.json"' in response.text
    spec = await client.get("/schema/openapi.json")
    assert spec.status_code == 200 and spec.json()["openapi"].startswith("3.1")
