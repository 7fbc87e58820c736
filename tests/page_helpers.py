"""Helpers for the tests of the HTML pages: forms with their CSRF token, uploads, users and predictions
made straight in the database, and what a full page and a partial look like."""

from __future__ import annotations

import hashlib
import re
import secrets
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx

from app import files, images, labels
from app.models import Prediction, Status, User
from tests import samples
from tests.helpers import unique_email

Client = httpx.AsyncClient
PASSWORD = "correct horse"
HX = {"HX-Request": "true"}
CSRF_COOKIES = ("csrftoken", "__Host-csrftoken")  # dev, production


async def csrf(browser: Client) -> str:
    """The CSRF token, as a page's forms carry it (the cookie is set by the first page fetched; in production
    its name has the `__Host-` prefix)."""
    if not any(name in browser.cookies for name in CSRF_COOKIES):
        await browser.get("/login")
    return next(browser.cookies[name] for name in CSRF_COOKIES if name in browser.cookies)


async def post_form(browser: Client, path: str, data: dict[str, str], **kwargs: Any) -> httpx.Response:
    return await browser.post(path, data={**data, "_csrf_token": await csrf(browser)}, **kwargs)


async def sign_up_page(browser: Client, email: str | None = None) -> str:
    """Register through the form (which signs in); returns the email."""
    email = email or unique_email()
    response = await post_form(browser, "/register", {"email": email, "password": PASSWORD})
    assert response.status_code == 303, response.text
    return email


async def log_in_page(browser: Client, email: str, password: str) -> httpx.Response:
    return await post_form(browser, "/login", {"email": email, "password": password})


async def upload_page(browser: Client, data: bytes, name: str = "photo.jpg", htmx: bool = True) -> httpx.Response:
    headers = {**HX, "X-CSRFToken": await csrf(browser)} if htmx else {}
    form = {} if htmx else {"_csrf_token": await csrf(browser)}
    return await browser.post("/", files={"file": (name, data, "image/jpeg")}, data=form, headers=headers)


async def user_of(browser: Client) -> User:
    page = (await browser.get("/")).text
    email = re.search(r'class="who" title="([^"]+)"', page)
    assert email, "not signed in"
    return await User.get(email=email.group(1))


async def make_prediction(user: User, label: str = "tabby cat", score: float = 0.5, **fields: Any) -> Prediction:
    """A finished prediction straight in the database (no image stored), for listings."""
    return await Prediction.create(**(prediction_values(user, label, score) | fields))


def prediction_values(user: User, label: str = "tabby cat", score: float = 0.5) -> dict[str, Any]:
    """The fields of a finished prediction of a new image, with no original kept (image_path "", as once pruned):
    a row naming a file that is not on disk shows a broken <img> on every page listing it, the admin page's
    included, where the browser tests wait for every image (tests/web/browser/test_browser.py, images_loaded)."""
    found = labels.find(label)
    assert found is not None
    top5 = [{"label": found.name, "wnid": found.wnid, "score": score}] + [
        {"label": x.name, "wnid": x.wnid, "score": 0.01} for x in labels.LABELS[:4]
    ]
    values: dict[str, Any] = {
        "user": user,
        "image_sha256": uuid4().hex * 2,
        "image_path": "",
        "model_name": "resnet50",
        "model_weights": "random",
        "status": Status.DONE,
        "label": found.name,
        "wnid": found.wnid,
        "score": score,
        "top5": top5,
        "latency_ms": 12.0,
    }
    return values


def stored_original(upload_dir: Path) -> dict[str, Any]:
    """A small JPEG of its own kept under UPLOAD_DIR, as the fields naming it: for a row whose page shows it."""
    data = samples.photo(secrets.randbelow(1 << 24))  # distinct bytes per seed below 2**24 (tests/samples.py)
    sha256 = hashlib.sha256(data).hexdigest()
    path = images.stored_path(sha256, "jpg")
    files.store_original(data, path, upload_dir)
    return {"image_sha256": sha256, "image_path": path}


def is_full_page(response: httpx.Response) -> bool:
    return response.text.lstrip().lower().startswith("<!doctype html>")


def assert_partial(response: httpx.Response, root_id: str) -> None:
    """A fragment whose first element carries the id the page's hx-target names."""
    assert response.status_code == 200, response.text
    assert not is_full_page(response) and "<body" not in response.text
    first_tag = re.search(r"<(\w+)[^>]*>", re.sub(r"{#.*?#}|<!--.*?-->", "", response.text, flags=re.S))
    assert first_tag and f'id="{root_id}"' in first_tag.group(0), response.text[:300]
    assert "HX-Request" in response.headers.get("vary", "")


def assert_full(response: httpx.Response, root_id: str) -> None:
    assert response.status_code == 200, response.text
    assert is_full_page(response)
    assert f'id="{root_id}"' in response.text
    assert '<main id="main"' in response.text
