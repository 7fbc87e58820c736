"""htmx: from the pinned CDN file with its SRI hash, and a copy of that very file in the repository (with its
licence) that the pages fall back to when the CDN does not load. Chromium checks both paths work
(tests/web/browser/test_offline.py); these checks need no browser."""

from __future__ import annotations

import base64
import hashlib
import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import httpx

from app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
VENDOR = ROOT / "static" / "vendor"
FIELDS = Settings.__pydantic_fields__  # type: ignore[attr-defined]


def test_the_local_copy_is_the_pinned_cdn_file() -> None:
    copy = (VENDOR / "htmx.min.js").read_bytes()
    integrity = "sha384-" + base64.b64encode(hashlib.sha384(copy).digest()).decode()
    assert FIELDS["htmx_integrity"].default == integrity
    version = re.search(rb'version:"([0-9.]+)"', copy)
    assert version and f"/htmx.org@{version[1].decode()}/dist/htmx.min.js" in FIELDS["htmx_url"].default
    assert "Zero-Clause BSD" in (VENDOR / "htmx.LICENSE").read_text()


def test_the_local_copy_is_part_of_the_repository() -> None:
    # Committed, not fetched by `make install` (which needs no npm): git must not ignore it.
    for name in ("htmx.min.js", "htmx.LICENSE"):
        ignored = subprocess.run(["git", "check-ignore", "-q", str(VENDOR / name)], cwd=ROOT, check=False)
        assert ignored.returncode == 1, f"static/vendor/{name} is ignored by git"


class Scripts(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        source = dict(attrs).get("src")
        if tag == "script" and source:
            self.sources.append(source)


async def test_pages_fall_back_to_the_local_copy(client: httpx.AsyncClient, settings: Settings) -> None:
    page = Scripts()
    page.feed((await client.get("/login")).text)
    # In order: htmx, the fallback that runs once it has loaded or failed, then the page's own script.
    assert page.sources[:3] == [settings.htmx_url, "/static/js/htmx-fallback.js", "/static/js/app.js"]
    fallback = await client.get("/static/js/htmx-fallback.js")
    assert fallback.status_code == 200 and fallback.headers["content-type"].startswith("text/javascript")
    local = re.search(r'"(/static/vendor/[^"]+)"', fallback.text)
    assert local and local[1] == "/static/vendor/htmx.min.js"
    copy = await client.get(local[1])
    assert copy.status_code == 200 and copy.content == (VENDOR / "htmx.min.js").read_bytes()
