"""The HTML pages: every page full and partial, signed in and out, as a user and as an admin; the forms
with their CSRF tokens and inline errors; the admin's filters, agreement, CSV export and live status."""

from __future__ import annotations

import csv
import dataclasses
import io
import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit
from uuid import uuid4

import httpx
import pytest
from litestar import Litestar
from redis.asyncio import Redis

from app import labels, thumbnails
from app.feeder import feed
from app.jobs.protocol import Heartbeat
from app.models import Feedback, Prediction, Status, User
from app.settings import Settings
from app.web.app import create_app
from app.web.sessions import NEXT_MAX
from tests import hostile, samples
from tests.conftest import CountingClassifier, reset_queue, serve
from tests.helpers import beat, share_the_database, unique_email
from tests.page_helpers import (
    HX,
    PASSWORD,
    Client,
    assert_full,
    assert_partial,
    csrf,
    is_full_page,
    log_in_page,
    make_prediction,
    post_form,
    sign_up_page,
    stored_original,
    upload_page,
    user_of,
)

LABEL_NAMES = {label.name for label in labels.LABELS}


# ---- signed out --------------------------------------------------------------------------------------

SIGNED_IN_PAGES = ["/", "/history", "/history?page=2", f"/predictions/{uuid4()}", "/admin", "/admin/status"]


@pytest.mark.parametrize("path", SIGNED_IN_PAGES)
async def test_signed_out_pages_redirect_to_login_and_back(browser: Client, path: str) -> None:
    response = await browser.get(path)
    assert response.status_code == 303
    location = urlsplit(response.headers["location"])
    assert location.path == "/login"
    assert parse_qs(location.query).get("next", ["/"]) == [path]
    # An HTMX request is told to navigate rather than handed a login page to swap in.
    swapped = await browser.get(path, headers=HX | {"HX-Current-URL": "http://testserver/history"})
    assert swapped.status_code == 200 and swapped.headers["HX-Redirect"] == "/login?next=%2Fhistory"


BACK_TO_PAGE = "/login?next=%2Fhistory%3Fpage%3D2"


@pytest.mark.parametrize(
    ("current", "redirect"),
    [
        ("https://testserver/history?page=2#top", BACK_TO_PAGE),  # behind a proxy that ends TLS
        ("http://images.example.com:8080/history?page=2", BACK_TO_PAGE),  # the proxy's host, not the app's
        ("/history?page=2", BACK_TO_PAGE),
        ("https://testserver/login?next=%2Fhistory", "/login"),  # never back to the account forms
        ("https://testserver//evil.example/x", "/login"),  # read as a path, another host
        ("https://testserver/history?label=" + "a" * 2100, "/login"),  # past NEXT_MAX
    ],
)
async def test_a_signed_out_swap_goes_to_sign_in_and_back_to_its_page(
    browser: Client, current: str, redirect: str
) -> None:
    """Found in review: a swap's page was taken from HX-Current-URL only when its scheme and host were the
    request's own, so behind a proxy that ends TLS (the page https, the request http) a session that expired
    with a page open went to /login without `next`, and signing in led to / instead of back to the page."""
    for method, path in [("GET", "/history"), ("POST", "/")]:
        response = await browser.request(method, path, headers=HX | {"HX-Current-URL": current})
        assert response.status_code == 200 and response.headers["HX-Redirect"] == redirect, (method, path)


async def test_a_long_page_address_still_leads_to_the_sign_in_form(browser: Client) -> None:
    """Found in review: a signed-out visit to a page whose address was over 2,000 characters was sent to
    /login?next=<that address>, which answered 400 (`next` is at most 2,000 characters) instead of the form."""
    response = await browser.get("/history?label=" + "a" * 2100)
    assert response.status_code == 303 and response.headers["location"] == "/login"
    assert (await browser.get(response.headers["location"])).status_code == 200


@pytest.mark.parametrize("current", ["http://[", "http://[::1/history"])
async def test_a_garbled_current_url_header_sends_a_swap_to_login(browser: Client, current: str) -> None:
    # htmx's HX-Current-URL is the client's to write; one urlsplit cannot parse answered 500.
    for method, path in [("GET", "/history"), ("POST", "/"), ("POST", "/logout")]:
        response = await browser.request(method, path, headers=HX | {"HX-Current-URL": current})
        assert response.status_code == 200, (method, path, response.status_code, response.text[:200])
        assert response.headers["HX-Redirect"] == "/login", (method, path)


@pytest.mark.parametrize(("path", "root"), [("/login", "login"), ("/register", "register")])
async def test_account_pages_full_and_partial(browser: Client, path: str, root: str) -> None:
    full = await browser.get(path)
    assert_full(full, root)
    assert 'name="_csrf_token"' in full.text and "csrftoken" in browser.cookies
    assert '"x-csrftoken"' in full.text  # htmx requests carry the token too
    assert 'src="/static/vendor/htmx.min.js"' in full.text  # the tests' local copy, no SRI
    assert_partial(await browser.get(path, headers=HX), root)


async def test_htmx_comes_from_the_cdn_with_sri_by_default(browser: Client, app: Litestar, settings: Settings) -> None:
    defaults = Settings()
    app.state.settings = dataclasses.replace(
        settings, htmx_url=defaults.htmx_url, htmx_integrity=defaults.htmx_integrity
    )
    try:
        page = (await browser.get("/login")).text
    finally:
        app.state.settings = settings
    assert f'src="{defaults.htmx_url}" integrity="{defaults.htmx_integrity}" crossorigin="anonymous"' in page


async def test_static_files_are_served(browser: Client) -> None:
    for path in ("/static/css/app.css", "/static/js/app.js", "/static/favicon.svg", "/static/vendor/htmx.min.js"):
        assert (await browser.get(path)).status_code == 200, path


@pytest.mark.parametrize(
    "target",
    ["https://evil.example/", "//evil.example/x", "/\\evil.example", "javascript:alert(1)", "/login", "/logout", "x"],
)
async def test_next_only_ever_leads_to_a_local_page(browser: Client, target: str) -> None:
    page = await browser.get("/login", params={"next": target})
    assert 'name="next" value="/"' in page.text
    email = await sign_up_page(browser)
    response = await post_form(browser, "/login", {"email": email, "password": PASSWORD, "next": target})
    assert response.status_code == 303 and response.headers["location"] == "/"


async def test_a_posted_next_past_its_bound_goes_home(browser: Client) -> None:
    """Found in review: the form's `next`, unlike the page's, had no bound: 60 kB of it came back as the Location
    header, past what a proxy takes of an upstream's head (nginx's 4-8 kB answer 502)."""
    email = await sign_up_page(browser)
    target = "/history?label=" + "a" * NEXT_MAX
    response = await post_form(browser, "/login", {"email": email, "password": PASSWORD, "next": target})
    assert response.status_code == 303 and response.headers["location"] == "/"


async def test_login_goes_on_to_next(browser: Client) -> None:
    email = await sign_up_page(browser)
    page = await browser.get("/login", params={"next": "/history?page=2"})
    assert 'name="next" value="/history?page=2"' in page.text
    response = await post_form(browser, "/login", {"email": email, "password": PASSWORD, "next": "/history?page=2"})
    assert response.status_code == 303 and response.headers["location"] == "/history?page=2"


async def test_register_sets_an_httponly_lax_cookie_and_signs_in(browser: Client) -> None:
    email = unique_email()
    response = await post_form(browser, "/register", {"email": email, "password": PASSWORD, "name": "Ada"})
    assert response.status_code == 303 and response.headers["location"] == "/"
    cookie = next(c for c in response.headers.get_list("set-cookie") if c.startswith("token="))
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert "Secure" not in cookie  # dev over plain HTTP; production sets it (settings.production)
    home = await browser.get("/")
    assert home.status_code == 200 and f'title="{email}"' in home.text and "Ada" in home.text


def cookie_attributes(response: httpx.Response, name: str) -> set[str]:
    """The attributes (lower-cased names: "secure", "httponly", "path", ...) of the cookie `name` the
    response sets."""
    for header in response.headers.get_list("set-cookie"):
        if header.partition("=")[0].strip() == name:
            return {attribute.partition("=")[0].strip().lower() for attribute in header.split(";")[1:]}
    raise AssertionError(f"no {name} cookie in {response.headers.get_list('set-cookie')}")


@pytest.fixture
async def production_browser(
    client: Client, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Client]:
    """A browser on the app built with production settings, over HTTPS (where Secure cookies go back)."""
    production = dataclasses.replace(
        settings,
        environment="production",
        secret_key="production-secret-" + "p" * 40,
        admin_password="a real admin password",
        inference_backend="tensorflow",
    )
    production.check()  # settings a production deployment starts with
    assert production.production

    share_the_database(monkeypatch)
    async with serve(create_app(production)) as browser:
        browser.base_url = httpx.URL("https://testserver")
        yield browser


async def test_in_production_the_cookies_are_secure_and_host_only(production_browser: Client) -> None:
    """`__Host-` names: browsers take them only when Secure, for Path=/ and no Domain, so no other host (a
    sibling subdomain) can set or replace them, which could otherwise make a person's forms fail (403)."""
    login = await production_browser.get("/login")
    assert login.status_code == 200 and {"secure", "path"} <= cookie_attributes(login, "__Host-csrftoken")
    email = unique_email()
    response = await post_form(production_browser, "/register", {"email": email, "password": PASSWORD})
    assert response.status_code == 303 and response.headers["location"] == "/"
    for name in ("__Host-token", "__Host-csrftoken"):
        assert {"secure", "path"} <= cookie_attributes(response, name) and "domain" not in cookie_attributes(
            response, name
        )
    assert {"httponly", "samesite"} <= cookie_attributes(response, "__Host-token")
    home = await production_browser.get("/")  # the cookie goes back over HTTPS: signed in
    assert home.status_code == 200 and f'title="{email}"' in home.text
    out = await post_form(production_browser, "/logout", {})
    assert out.status_code == 303  # both cleared, with Secure: a browser ignores it on a __Host- cookie otherwise
    assert all("secure" in cookie_attributes(out, name) for name in ("__Host-token", "__Host-csrftoken"))
    assert not {"__Host-token", "__Host-csrftoken"} & set(production_browser.cookies)


@pytest.mark.parametrize(
    ("form", "field", "message"),
    [
        ({"email": "not-an-email", "password": PASSWORD}, "email", "valid email"),
        ({"email": "a@example.com", "password": "short"}, "password", "8 to 128"),
        ({"email": "a@example.com", "password": "x" * 129}, "password", "8 to 128"),
        ({"email": "a@example.com", "password": PASSWORD, "name": "n" * 101}, "name", "at most 100"),
        ({}, "email", "valid email"),
    ],
)
async def test_register_errors_are_shown_next_to_the_field(
    browser: Client, form: dict[str, str], field: str, message: str
) -> None:
    response = await post_form(browser, "/register", form)
    assert response.status_code == 400 and is_full_page(response)
    error = re.search(rf'<p class="field-error" id="{field}-error">([^<]+)</p>', response.text)
    assert error and message in error.group(1)
    assert re.search(rf'id="{field}"[^>]*aria-invalid="true"[^>]*aria-describedby="{field}-error', response.text)
    swapped = await post_form(browser, "/register", form, headers=HX)
    assert swapped.status_code == 400 and swapped.text.lstrip().startswith('<div id="register"')


async def test_register_with_a_taken_email_is_409_inline(browser: Client) -> None:
    email = await sign_up_page(browser)
    response = await post_form(browser, "/register", {"email": email.upper(), "password": PASSWORD}, headers=HX)
    assert response.status_code == 409
    assert 'id="email-error">An account with this email already exists' in response.text
    assert f'value="{email.upper()}"' in response.text  # what was typed stays


async def test_login_errors_inline_then_success_by_htmx(browser: Client) -> None:
    email = await sign_up_page(browser)
    browser.cookies.delete("token")
    wrong = await log_in_page(browser, email, "wrong password")
    assert wrong.status_code == 401 and 'id="password-error">Wrong email or password' in wrong.text
    assert "token=" not in wrong.headers.get("set-cookie", "")
    blank = await post_form(browser, "/login", {"email": "", "password": ""})
    assert blank.status_code == 400 and 'id="email-error"' in blank.text and 'id="password-error"' in blank.text
    ok = await post_form(browser, "/login", {"email": email, "password": PASSWORD}, headers=HX)
    assert ok.status_code == 200 and ok.headers["HX-Redirect"] == "/"
    assert "token=" in ok.headers["set-cookie"]


async def test_too_many_failed_logins_show_a_message(browser: Client, settings: Settings) -> None:
    email = await sign_up_page(browser)
    for _ in range(settings.login_attempts_per_account):
        assert (await log_in_page(browser, email, "wrong password")).status_code == 401
    response = await log_in_page(browser, email, PASSWORD)
    assert response.status_code == 429 and int(response.headers["Retry-After"]) > 0
    assert 'role="alert"><p>Too many failed sign-ins' in response.text


async def test_forms_without_the_csrf_token_are_refused(browser: Client) -> None:
    await csrf(browser)
    page = await browser.post("/login", data={"email": "a@example.com", "password": PASSWORD})
    assert page.status_code == 403 and is_full_page(page) and "CSRF" in page.text
    swapped = await browser.post("/login", data={"email": "a@example.com", "password": PASSWORD}, headers=HX)
    assert swapped.status_code == 403 and not is_full_page(swapped)
    assert swapped.headers["HX-Retarget"] == "#messages" and 'role="alert"' in swapped.text
    forged = await browser.post("/login", data={"email": "a@example.com", "_csrf_token": "0" * 128})
    assert forged.status_code == 403


async def test_the_csrf_token_is_bound_to_the_session(app: Litestar, user_browser: Client) -> None:
    """A valid CSRF cookie and token from another browser (planted, say, from a sibling subdomain) do not
    carry a form in this session; the session's own do."""
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50004))  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as elsewhere:
        planted = await csrf(elsewhere)  # a real token, just not this session's
    own = user_browser.cookies["csrftoken"]
    user_browser.cookies.set("csrftoken", planted)
    refused = await user_browser.post("/logout", data={"_csrf_token": planted})
    assert refused.status_code == 403 and "does not belong to your session" in refused.text
    user_browser.cookies.set("csrftoken", own)
    assert (await user_browser.post("/logout", data={"_csrf_token": own})).status_code == 303


async def test_a_csrf_cookie_planted_before_signing_in_does_not_carry_forms(app: Litestar, browser: Client) -> None:
    """Found in review: signing in bound whatever CSRF cookie the browser came with, so one planted before
    (from a sibling subdomain, a network on the way), whose token the planter knows, carried forms in the
    session signed in after. Signing in now makes a CSRF cookie of its own."""
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50011))  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as elsewhere:
        planted = await csrf(elsewhere)  # a real token, which the planter got for itself
    email = await sign_up_page(browser)
    await post_form(browser, "/logout", {})
    browser.cookies.set("csrftoken", planted, domain="testserver.local")  # where the app's own cookies go
    signed = await browser.post("/login", data={"email": email, "password": PASSWORD, "_csrf_token": planted})
    assert signed.status_code == 303 and browser.cookies["csrftoken"] != planted
    forged = await browser.post("/logout", data={"_csrf_token": planted})
    assert forged.status_code == 403, forged.text
    assert (await post_form(browser, "/logout", {})).status_code == 303  # the session's own token carries it


async def test_the_session_cookie_is_secure_over_https(app: Litestar, client: Client) -> None:
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50005))  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as secure:
        email = await sign_up_page(secure)
        assert email
        cookie = next(c for c in secure.cookies.jar if c.name == "token")
    assert cookie.secure and cookie.has_nonstandard_attr("HttpOnly")


async def test_signing_out_gives_the_next_session_a_new_csrf_token(user_browser: Client) -> None:
    before = user_browser.cookies["csrftoken"]
    response = await post_form(user_browser, "/logout", {})
    assert response.status_code == 303 and "csrftoken" not in user_browser.cookies
    assert await csrf(user_browser) != before


async def test_logout_revokes_the_token_and_clears_the_cookie(user_browser: Client) -> None:
    token = user_browser.cookies["token"]
    response = await post_form(user_browser, "/logout", {})
    assert response.status_code == 303 and response.headers["location"] == "/login"
    assert 'token=""' in response.headers["set-cookie"] or "Max-Age=0" in response.headers["set-cookie"]
    user_browser.cookies.set("token", token)  # a copy kept from before logging out
    assert (await user_browser.get("/history")).status_code == 303


async def test_a_stale_cookie_is_dropped_on_the_way_to_login(browser: Client) -> None:
    browser.cookies.set("token", "not-a-jwt")
    response = await browser.get("/")
    assert response.status_code == 303 and response.headers["location"] == "/login"
    assert "token=" in response.headers["set-cookie"]


# ---- signed in: every page full and partial -------------------------------------------------------


@pytest.mark.parametrize(("path", "root"), [("/", "classify"), ("/history", "history"), ("/history?page=3", "history")])
async def test_user_pages_full_and_partial(user_browser: Client, path: str, root: str) -> None:
    assert_full(await user_browser.get(path), root)
    assert_partial(await user_browser.get(path, headers=HX), root)


async def test_pages_take_the_api_bearer_token_too(client: Client, auth: dict[str, str]) -> None:
    assert_full(await client.get("/history", headers=auth), "history")


async def test_a_boosted_or_history_restore_request_gets_the_whole_page(user_browser: Client) -> None:
    assert is_full_page(await user_browser.get("/history", headers=HX | {"HX-Boosted": "true"}))
    assert is_full_page(await user_browser.get("/history", headers=HX | {"HX-History-Restore-Request": "true"}))


async def test_prediction_page_full_and_partial(user_browser: Client) -> None:
    prediction = await make_prediction(await user_of(user_browser), "tabby cat", 0.42)
    full = await user_browser.get(f"/predictions/{prediction.id}")
    assert_full(full, "result")
    assert "tabby" in full.text and "42.0%" in full.text and "Untrained model" in full.text
    assert 'id="feedback"' in full.text
    assert_partial(await user_browser.get(f"/predictions/{prediction.id}", headers=HX), "result")


async def test_a_queued_prediction_polls_until_done(user_browser: Client, app: Litestar) -> None:
    user = await user_of(user_browser)
    prediction = await make_prediction(user)
    # On a stream, as far as the feeder knows: waiting for it instead, it was fed by the app's own feeder, its
    # stand-in original found missing and the prediction failed, if a round came before the page was read.
    queued = {"status": Status.QUEUED, "enqueued_at": datetime.now(UTC)}
    await Prediction.filter(id=prediction.id).update(**queued, label=None, score=None, top5=None)
    await feed(app.state.services)  # a feeder round meanwhile: it leaves it alone
    page = await user_browser.get(f"/predictions/{prediction.id}", headers=HX)
    assert f'hx-get="/predictions/{prediction.id}" hx-trigger="load delay:1500ms"' in page.text
    # "Warming up" while no worker is alive (tests/web/test_warming_up.py).
    assert ("Classifying" in page.text or "Warming up" in page.text) and 'id="feedback"' not in page.text
    full = await user_browser.get(f"/predictions/{prediction.id}")
    assert '<noscript><meta http-equiv="refresh"' in full.text  # without JS the page reloads itself
    top5 = [{"label": "tabby cat", "wnid": "n02123045", "score": 0.3}]
    await Prediction.filter(id=prediction.id).update(status=Status.DONE, label="tabby cat", score=0.3, top5=top5)
    done = await user_browser.get(f"/predictions/{prediction.id}", headers=HX)
    assert 'hx-trigger="load delay' not in done.text and "tabby cat" in done.text


async def test_a_failed_prediction_says_why(user_browser: Client) -> None:
    prediction = await make_prediction(await user_of(user_browser), status=Status.FAILED, error="Gave up after 3")
    page = await user_browser.get(f"/predictions/{prediction.id}")
    assert page.status_code == 200 and "Could not classify" in page.text and "Gave up after 3" in page.text


async def test_nobody_sees_another_users_prediction_page_but_admins(
    user_browser: Client, client: Client, auth: dict[str, str], admin_auth: dict[str, str]
) -> None:
    prediction = await make_prediction(await user_of(user_browser))
    for path in (f"/predictions/{prediction.id}", f"/predictions/{prediction.id}/image"):
        stranger = await client.get(path, headers=auth)
        assert stranger.status_code == 404 and is_full_page(stranger) and "No such prediction" in stranger.text
    assert (await client.get(f"/predictions/{prediction.id}", headers=admin_auth)).status_code == 200


# ---- classify ----------------------------------------------------------------------------------------


async def test_classify_by_htmx_answers_the_result_partial(user_browser: Client, worker: CountingClassifier) -> None:
    response = await upload_page(user_browser, samples.photo(2001), name="cat.jpg")
    assert_partial(response, "result")
    prediction = await Prediction.filter(file_name="cat.jpg").order_by("-created_at").first()
    assert prediction is not None and prediction.status == Status.DONE
    assert f'<h2 id="result-title" tabindex="-1" data-focus>{prediction.label}</h2>' in response.text
    assert response.text.count('<span class="top5-label">') == 5
    assert "Untrained model" in response.text and "resnet50" in response.text
    # Whether the cache answered is for admins only (it tells what other people uploaded).
    assert "Cached" not in response.text and " ms</dd>" in response.text
    assert f'src="/predictions/{prediction.id}/image"' in response.text
    assert 'id="feedback"' in response.text
    calls = worker.calls
    again = await upload_page(user_browser, samples.photo(2001), name="cat-again.jpg")
    # Answered from the cache (no model call), and it looks like any other result.
    assert worker.calls == calls and f">{prediction.label}</h2>" in again.text and "Cached" not in again.text


async def test_classify_without_javascript_renders_the_result_page(
    user_browser: Client, worker: CountingClassifier
) -> None:
    response = await upload_page(user_browser, samples.photo(2002), htmx=False)
    assert_full(response, "result")
    assert 'id="upload-form"' in response.text and response.text.count('<span class="top5-label">') == 5


@pytest.mark.parametrize(
    ("data", "name", "status", "message"),
    [
        (b"hello, I am text", "cat.jpg", 415, "JPEG, PNG, WebP, GIF, BMP, HEIC or AVIF"),
        (b"", "empty.jpg", 400, "empty"),
        (samples.truncated_jpeg(), "half.jpg", 400, "truncated or corrupt"),
    ],
)
async def test_rejected_files_get_a_message_in_the_page(
    user_browser: Client, no_worker: None, data: bytes, name: str, status: int, message: str
) -> None:
    for htmx in (True, False):
        response = await upload_page(user_browser, data, name=name, htmx=htmx)
        assert response.status_code == status
        assert is_full_page(response) is not htmx
        assert "Could not classify this image" in response.text and message in response.text


async def test_no_file_chosen_is_400_in_the_page(user_browser: Client) -> None:
    headers = HX | {"X-CSRFToken": await csrf(user_browser)}
    response = await user_browser.post("/", files={"file": ("", b"", "application/octet-stream")}, headers=headers)
    assert response.status_code == 400 and "Choose an image" in response.text
    no_part = await post_form(user_browser, "/", {"something": "else"}, headers=HX)
    assert no_part.status_code == 400 and "Choose an image" in no_part.text


async def test_no_worker_running_yet_the_image_waits_warming_up(user_browser: Client, no_worker: None) -> None:
    # More in tests/web/test_warming_up.py.
    response = await upload_page(user_browser, samples.photo(2003))
    assert response.status_code == 202 and 'id="result"' in response.text
    assert "warming up" in response.text and "app.worker" not in response.text


async def test_a_timeout_shows_the_prediction_as_still_working(
    user_browser: Client, app: Litestar, no_worker: None, redis: Redis, settings: Settings
) -> None:
    heartbeat = Heartbeat(name="idle", model_id=settings.model_id, started_at=time.time(), images_per_second=50)
    await beat(redis, heartbeat, ttl=30)  # a worker that takes nothing
    services = app.state.services
    services.settings = dataclasses.replace(settings, wait_timeout=0.3)
    try:
        response = await upload_page(user_browser, samples.photo(2004), name="slow.jpg")
    finally:
        services.settings = settings
        await reset_queue(redis)
        # Left queued, it would be re-enqueued later (app.recovery) and cost later tests' workers an image.
        await Prediction.filter(file_name="slow.jpg").delete()
    assert response.status_code == 504
    assert "No result within 0.3 s" in response.text and "Classifying" in response.text
    assert 'hx-trigger="load delay:1500ms"' in response.text  # keeps asking


async def test_an_upload_over_the_limit_is_413(user_browser: Client, settings: Settings, no_worker: None) -> None:
    response = await upload_page(user_browser, b"\xff\xd8" + b"0" * settings.max_upload_bytes)
    assert response.status_code == 413 and "larger than" in response.text


async def test_thumbnail_is_private_to_its_owner(
    user_browser: Client, client: Client, admin_auth: dict[str, str], worker: CountingClassifier
) -> None:
    await upload_page(user_browser, samples.photo(2005, size=(1200, 800), fmt="PNG"), name="big.png")
    prediction = await Prediction.get(file_name="big.png")
    image = await user_browser.get(f"/predictions/{prediction.id}/image")
    assert image.status_code == 200 and image.headers["content-type"] == "image/webp"
    assert image.headers["cache-control"].startswith("private")
    assert image.content[:4] == b"RIFF" and len(image.content) < 50_000
    again = await user_browser.get(f"/predictions/{prediction.id}/image")
    assert again.content == image.content  # made once, then kept
    assert (await client.get(f"/predictions/{prediction.id}/image", headers=admin_auth)).status_code == 200


async def test_a_missing_original_is_404(user_browser: Client) -> None:
    # A row naming an original that is not on disk (deleted outside the app), unlike a pruned one ("").
    prediction = await make_prediction(await user_of(user_browser), image_path=f"{uuid4().hex}.jpg")
    response = await user_browser.get(f"/predictions/{prediction.id}/image")
    assert response.status_code == 404 and "no longer stored" in response.text


async def test_the_preview_of_an_accepted_upload_is_served(
    client: httpx.AsyncClient, auth: dict[str, str], no_worker: None
) -> None:
    """Found in review: a long CMYK JPEG was accepted (202) but its preview answered 400 "too large to
    decode" (drafted larger than the upload's check drafted it): a broken image on every page showing it."""
    accepted = await client.post(
        "/api/predictions",
        headers=auth,
        files={"file": ("long.jpg", hostile.long_cmyk_jpeg())},
        params={"wait": "false"},
    )
    assert accepted.status_code == 202, accepted.text
    prediction_id = accepted.json()["id"]
    try:
        image = await client.get(f"/predictions/{prediction_id}/image", headers=auth)
    finally:
        await Prediction.filter(id=prediction_id).update(status=Status.FAILED)
    assert image.status_code == 200 and image.headers["content-type"] == "image/webp", image.text


async def test_an_original_that_no_longer_passes_has_no_preview_not_a_400(
    user_browser: Client, settings: Settings
) -> None:
    """Found in review: a stored original the decode processes refuse (here: over the decode budget, as
    after DECODE_COST_MB was lowered) answered 400, a client error, for a page's <img>: "no preview" is 404."""
    data = hostile.huge_webp()
    prediction = await make_prediction(await user_of(user_browser), image_path=f"{uuid4().hex}.webp")
    settings.upload_dir.mkdir(parents=True, exist_ok=True)
    (settings.upload_dir / prediction.image_path).write_bytes(data)
    response = await user_browser.get(f"/predictions/{prediction.id}/image")
    assert response.status_code == 404 and "No preview" in response.text, response.text


async def test_a_preview_that_cannot_be_kept_is_still_served(
    client: httpx.AsyncClient, auth: dict[str, str], settings: Settings, no_worker: None
) -> None:
    """Found in review: the original stored, only keeping its rendered preview failing (a full disk; here a
    file where the preview's folder goes), the route answered 404 "The image is no longer stored": false."""
    accepted = await client.post(
        "/api/predictions",
        headers=auth,
        files={"file": ("p.png", samples.photo(7_334, fmt="PNG"))},
        params={"wait": "false"},
    )
    assert accepted.status_code == 202, accepted.text
    body = accepted.json()
    blocker = thumbnails.thumbnail_path(settings.upload_dir, body["image_sha256"]).parent
    blocker.parent.mkdir(parents=True, exist_ok=True)
    assert not blocker.exists(), "pick another seed: that folder exists"
    blocker.write_bytes(b"")
    try:
        image = await client.get(f"/predictions/{body['id']}/image", headers=auth)
    finally:
        blocker.unlink()
        await Prediction.filter(id=body["id"]).update(status=Status.FAILED)
    assert image.status_code == 200 and image.headers["content-type"] == "image/webp", image.text


async def test_an_original_that_cannot_be_read_is_503_not_gone(user_browser: Client, settings: Settings) -> None:
    """Found in review: every OSError from the original was answered 404 "The image is no longer stored";
    one that is there but cannot be read (here a folder in its place) is the server's trouble."""
    prediction = await make_prediction(await user_of(user_browser), image_path=f"{uuid4().hex}.jpg")
    (settings.upload_dir / prediction.image_path).mkdir(parents=True)
    response = await user_browser.get(f"/predictions/{prediction.id}/image")
    assert response.status_code == 503 and response.headers["retry-after"] == "30", response.text


async def test_pages_ask_for_no_image_of_a_pruned_prediction(user_browser: Client, settings: Settings) -> None:
    """Found in review: history and a prediction's page showed <img src=".../image"> for a prediction whose
    original is gone (pruned: image_path ""; or never stored), and that URL answers 404: a broken image.
    They show the crossed-out tile the collection page shows, and the image of one still stored."""
    user = await user_of(user_browser)
    pruned = await make_prediction(user, image_path="")
    kept = await make_prediction(user, **stored_original(settings.upload_dir))
    for path in ("/history", f"/predictions/{pruned.id}"):
        for headers in ({}, HX):
            page = await user_browser.get(path, headers=headers)
            assert f'src="/predictions/{pruned.id}/image"' not in page.text, path
            assert "thumb-missing" in page.text, path
    assert f'src="/predictions/{kept.id}/image"' in (await user_browser.get("/history")).text
    assert f'src="/predictions/{kept.id}/image"' in (await user_browser.get(f"/predictions/{kept.id}")).text
    assert "no longer stored" in (await user_browser.get(f"/predictions/{pruned.id}")).text


# ---- feedback ----------------------------------------------------------------------------------------


async def test_feedback_is_stored_shown_and_editable(user_browser: Client) -> None:
    user = await user_of(user_browser)
    prediction = await make_prediction(user, "tabby cat")
    path = f"/predictions/{prediction.id}/feedback"
    saved = await post_form(user_browser, path, {"verdict": "correct", "comment": "spot on"}, headers=HX)
    assert_partial(saved, "feedback")
    assert "feedback is saved" in saved.text and '<span class="badge good">Correct</span>' in saved.text
    changed = await post_form(
        user_browser, path, {"verdict": "wrong", "correct_label": "Egyptian Mau", "comment": "a cat, not a tabby"}
    )
    assert changed.status_code == 303 and changed.headers["location"] == f"/predictions/{prediction.id}#feedback"
    stored = await Feedback.get(prediction=prediction, user=user)
    assert (stored.is_correct, stored.correct_label, stored.correct_wnid) == (False, "Egyptian Mau", "n02124075")
    assert stored.comment == "a cat, not a tabby" and await Feedback.filter(prediction=prediction).count() == 1
    page = await user_browser.get(f"/predictions/{prediction.id}")
    assert "it is <strong>Egyptian Mau</strong>" in page.text and 'value="wrong" checked' in page.text
    history = await user_browser.get("/history")
    assert "Wrong: Egyptian Mau" in history.text


@pytest.mark.parametrize(
    ("form", "field", "message"),
    [
        ({}, "verdict", "Say whether"),
        ({"verdict": "maybe"}, "verdict", "Say whether"),
        ({"verdict": "wrong", "correct_label": "tabbby"}, "correct_label", "Unknown class"),
        ({"verdict": "wrong", "comment": "x" * 1001}, "comment", "at most 1000"),
    ],
)
async def test_feedback_errors_are_shown_next_to_the_field(
    user_browser: Client, form: dict[str, str], field: str, message: str
) -> None:
    prediction = await make_prediction(await user_of(user_browser))
    response = await post_form(user_browser, f"/predictions/{prediction.id}/feedback", form, headers=HX)
    assert response.status_code == 400 and not is_full_page(response)
    error = re.search(rf'<p class="field-error" id="{field}-error">([^<]+)</p>', response.text)
    assert error and message in error.group(1)
    assert await Feedback.filter(prediction=prediction).count() == 0
    page = await post_form(user_browser, f"/predictions/{prediction.id}/feedback", form)
    assert page.status_code == 400 and is_full_page(page) and f'id="{field}-error"' in page.text


async def test_a_misspelt_class_gets_suggestions(user_browser: Client) -> None:
    prediction = await make_prediction(await user_of(user_browser))
    form = {"verdict": "wrong", "correct_label": "retriever"}
    response = await post_form(user_browser, f"/predictions/{prediction.id}/feedback", form, headers=HX)
    assert response.status_code == 400 and "Did you mean" in response.text and "Golden Retriever" in response.text


async def test_feedback_on_an_unfinished_prediction_is_409(user_browser: Client) -> None:
    # On a stream, as far as the feeder knows (else fed, and failed: its stand-in original is missing).
    prediction = await make_prediction(await user_of(user_browser), status=Status.QUEUED, enqueued_at=datetime.now(UTC))
    form = {"verdict": "correct"}
    response = await post_form(user_browser, f"/predictions/{prediction.id}/feedback", form, headers=HX)
    assert response.status_code == 409 and "once the prediction is done" in response.text


async def test_feedback_on_someone_elses_prediction_is_404(user_browser: Client, client: Client) -> None:
    other = await User.create(email=unique_email(), password_hash="x")
    prediction = await make_prediction(other)
    form = {"verdict": "correct"}
    response = await post_form(user_browser, f"/predictions/{prediction.id}/feedback", form, headers=HX)
    assert response.status_code == 404 and response.headers["HX-Retarget"] == "#messages"


async def test_label_search_options(user_browser: Client) -> None:
    response = await user_browser.get("/labels/options", params={"correct_label": "retriev"}, headers=HX)
    assert response.status_code == 200
    options = re.findall(r'<option value="([^"]+)">', response.text)
    assert "Golden Retriever" in options and len(options) <= 20
    assert (await user_browser.get("/labels/options", params={"correct_label": "x" * 101})).status_code == 400


# ---- history -----------------------------------------------------------------------------------------


async def test_history_is_newest_first_and_paginated(user_browser: Client, settings: Settings) -> None:
    user = await user_of(user_browser)
    stored = [stored_original(settings.upload_dir) for _ in range(14)]  # each row's thumbnail, loaded lazily
    made = [await make_prediction(user, "tabby cat", score=0.01 * (i + 1), **stored[i]) for i in range(14)]
    first = await user_browser.get("/history")
    ids = re.findall(r'href="/predictions/([0-9a-f-]{36})"', first.text)
    assert ids == [str(p.id) for p in made[::-1][:12]]
    assert "14 predictions" in first.text and "Page 1 of 2" in first.text
    assert 'hx-get="/history?page=2"' in first.text and 'loading="lazy"' in first.text
    second = await user_browser.get("/history?page=2", headers=HX)
    assert_partial(second, "history")
    assert re.findall(r'href="/predictions/([0-9a-f-]{36})"', second.text) == [str(made[1].id), str(made[0].id)]
    beyond = await user_browser.get("/history?page=9")
    assert beyond.status_code == 200 and "nothing on page 9" in beyond.text


async def test_history_shows_only_ones_own(user_browser: Client, client: Client, auth: dict[str, str]) -> None:
    await make_prediction(await user_of(user_browser))
    page = await client.get("/history", headers=auth)
    assert "Nothing here yet" in page.text


@pytest.mark.parametrize("query", ["page=0", "page=abc", "page=-1"])
async def test_bad_query_parameters_are_400_pages(user_browser: Client, query: str) -> None:
    response = await user_browser.get(f"/history?{query}")
    assert response.status_code == 400 and is_full_page(response)


# ---- admin -------------------------------------------------------------------------------------------

ADMIN_SECTIONS = [
    ("/admin", "admin"),
    ("/admin/users", "users"),
    ("/admin/feedback", "admin-feedback"),
    ("/admin/agreement", "agreement"),
    ("/admin/status", "status"),
]


@pytest.mark.parametrize(("path", "root"), ADMIN_SECTIONS)
async def test_admin_pages_full_and_partial(admin_browser: Client, path: str, root: str) -> None:
    assert_full(await admin_browser.get(path), root)
    assert_partial(await admin_browser.get(path, headers=HX), root)


@pytest.mark.parametrize("path", [path for path, _ in ADMIN_SECTIONS] + ["/admin/feedback.csv"])
async def test_admin_pages_are_403_for_users(user_browser: Client, path: str) -> None:
    page = await user_browser.get(path)
    assert page.status_code == 403 and is_full_page(page) and "Administrators only" in page.text
    swapped = await user_browser.get(path, headers=HX)
    assert swapped.status_code == 403 and not is_full_page(swapped) and "Administrators only" in swapped.text


async def test_admin_link_only_for_admins(user_browser: Client, client: Client, admin_auth: dict[str, str]) -> None:
    assert 'href="/admin"' not in (await user_browser.get("/")).text
    assert 'href="/admin"' in (await client.get("/", headers=admin_auth)).text


async def seed_feedback() -> tuple[str, list[Prediction]]:
    """Two users' feedback on labels unique to this test: 'goldfish' 1 of 3 right, 'tench' 1 of 1."""
    suffix = uuid4().hex[:6]
    ada = await User.create(email=f"ada-{suffix}@example.com", password_hash="x")
    bob = await User.create(email=f"=bob-{suffix}@example.com", password_hash="x")
    made = [
        await make_prediction(ada, "goldfish", 0.9),
        await make_prediction(ada, "goldfish", 0.8),
        await make_prediction(bob, "goldfish", 0.7),
        await make_prediction(bob, "tench", 0.6),
    ]
    await Feedback.create(prediction=made[0], user=ada, is_correct=True)
    await Feedback.create(
        prediction=made[1], user=ada, is_correct=False, correct_label="tench", correct_wnid="n01440764", comment="=1+1"
    )
    await Feedback.create(prediction=made[2], user=bob, is_correct=False, comment="no idea")
    await Feedback.create(prediction=made[3], user=bob, is_correct=True)
    return suffix, made


async def test_admin_feedback_filters(admin_browser: Client) -> None:
    suffix, _ = await seed_feedback()
    everything = await admin_browser.get("/admin/feedback", params={"label": "goldfish"})
    assert everything.text.count(f"-{suffix}@example.com") == 3
    wrong = await admin_browser.get("/admin/feedback", params={"label": "goldfish", "wrong_only": "true"}, headers=HX)
    assert_partial(wrong, "admin-feedback")
    assert wrong.text.count(f"-{suffix}@example.com") == 2 and "Correct</span>" not in wrong.text
    assert 'href="/admin/feedback.csv?wrong_only=true&amp;label=goldfish"' in wrong.text
    page = await admin_browser.get("/admin")
    assert "<option>goldfish</option>" in page.text or "<option selected>goldfish</option>" in page.text
    assert (await admin_browser.get("/admin/feedback", params={"label": "x" * 101})).status_code == 400


async def agreement_table(admin_browser: Client) -> tuple[list[tuple[str, int, int, int]], dict[str, tuple[int, int]]]:
    """The agreement table's rows as shown, (label, feedback, agreed, percent), and (feedback, agreed) by label."""
    page = (await admin_browser.get("/admin/agreement", headers=HX)).text
    cells = (
        r'<a href="/admin/feedback\?label=(\w+)">\w+</a></td>\s*<td class="num">(\d+)</td>\s*<td class="num">(\d+)</td>'
        r'\s*<td class="rate">.*?</span></span> (\d+)%</td>'
    )
    rows = [(label, int(total), int(agreed), int(rate)) for label, total, agreed, rate in re.findall(cells, page)]
    return rows, {label: (total, agreed) for label, total, agreed, _ in rows}


async def test_admin_agreement_per_label(admin_browser: Client) -> None:
    """Counted by label, worst first. The database holds other tests' feedback on these labels too (the stand-in
    model predicts them), so what this test's feedback adds is compared, not the totals."""
    _, before = await agreement_table(admin_browser)
    await seed_feedback()
    rows, after = await agreement_table(admin_browser)

    def added(label: str) -> tuple[int, int]:
        was = before.get(label, (0, 0))
        return after[label][0] - was[0], after[label][1] - was[1]

    assert added("goldfish") == (3, 1) and added("tench") == (1, 1)  # a third agreed, and all agreed
    assert all(f"{agreed / total * 100:.0f}" == str(rate) for _, total, agreed, rate in rows), rows
    rates = [agreed / total for _, total, agreed, _ in rows]
    assert rates == sorted(rates), rows  # worst first


async def test_admin_csv_export(admin_browser: Client) -> None:
    suffix, made = await seed_feedback()
    response = await admin_browser.get("/admin/feedback.csv", params={"label": "goldfish"})
    assert response.status_code == 200 and response.headers["content-type"] == "text/csv; charset=utf-8"
    assert response.headers["content-disposition"].startswith('attachment; filename="feedback-')
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert list(rows[0]) == [
        "image_sha256",
        "predicted_label",
        "predicted_wnid",
        "correct_label",
        "correct_wnid",
        "is_correct",
        "comment",
        "user_email",
        "updated_at",
        "model_trained",
    ]
    mine = {row["image_sha256"]: row for row in rows if suffix in row["user_email"]}
    assert len(mine) == 3
    confirmed, corrected, unknown = (mine[p.image_sha256] for p in made[:3])
    assert (confirmed["correct_label"], confirmed["correct_wnid"], confirmed["is_correct"]) == (
        "goldfish",
        "n01443537",
        "true",
    )
    assert (corrected["correct_label"], corrected["correct_wnid"], corrected["is_correct"]) == (
        "tench",
        "n01440764",
        "false",
    )
    assert corrected["comment"] == "'=1+1"  # a spreadsheet will not run it
    assert unknown["user_email"].startswith("'=bob-") and unknown["correct_label"] == ""
    wrong = await admin_browser.get("/admin/feedback.csv", params={"label": "goldfish", "wrong_only": "true"})
    assert {row["is_correct"] for row in csv.DictReader(io.StringIO(wrong.text))} == {"false"}


async def test_admin_csv_streams_many_rows(admin_browser: Client) -> None:
    user = await User.create(email=unique_email(), password_hash="x")
    for _ in range(3):
        await seed_feedback()
    many = [await make_prediction(user, "catamaran") for _ in range(12)]
    await Feedback.bulk_create([Feedback(prediction=p, user=user, is_correct=False) for p in many])
    from app.web.pages import admin

    original, admin.CSV_PAGE = admin.CSV_PAGE, 5  # several pages
    try:
        response = await admin_browser.get("/admin/feedback.csv", params={"label": "catamaran"})
    finally:
        admin.CSV_PAGE = original
    assert len(list(csv.DictReader(io.StringIO(response.text)))) == 12


async def test_admin_users_list(admin_browser: Client) -> None:
    page = await admin_browser.get("/admin/users", headers=HX)
    assert_partial(page, "users")
    assert f"{await User.all().count()} accounts" in page.text
    assert '<th scope="col" class="num">Predictions</th>' in page.text
    user = await User.create(email=unique_email(), password_hash="x")
    await make_prediction(user)
    fresh = (await admin_browser.get("/admin/users")).text
    row = re.search(rf"<td>{re.escape(user.email)}</td>.*?</tr>", fresh, flags=re.S)
    assert row and re.findall(r'<td class="num">(\d+)</td>', row.group(0)) == ["1", "0"]


async def test_admin_status_shows_live_workers(admin_browser: Client, worker: CountingClassifier) -> None:
    page = await admin_browser.get("/admin/status", headers=HX)
    assert_partial(page, "status")
    assert 'hx-trigger="every 2s"' in page.text and "<dt>Workers</dt><dd>1</dd>" in page.text
    assert "test-" in page.text and "resnet50-random" in page.text


async def test_admin_status_without_workers(admin_browser: Client, no_worker: None) -> None:
    page = await admin_browser.get("/admin/status", headers=HX)
    assert "<dt>Workers</dt><dd>0</dd>" in page.text and "No worker is running" in page.text
    assert "<code>python -m app.worker</code>" in page.text  # admins are told what to do


# ---- errors ------------------------------------------------------------------------------------------


async def test_unknown_pages_are_404_html_and_api_404_json(user_browser: Client) -> None:
    page = await user_browser.get("/no/such/page")
    assert page.status_code == 404 and is_full_page(page) and "Page not found" in page.text
    assert "nothing at this address" in page.text
    # With htmx: the same message alone, swapped into the page's message area.
    swapped = await user_browser.get("/no/such/page", headers=HX)
    assert swapped.status_code == 404 and not is_full_page(swapped)
    assert swapped.headers["HX-Retarget"] == "#messages" and swapped.headers["HX-Reswap"] == "innerHTML"
    assert swapped.text.lstrip().startswith('<div class="alert alert-error" role="alert">')
    assert (
        "<p><strong>Page not found.</strong> There is nothing at this address: the link may be wrong, "
        "or the page has gone.</p>" in swapped.text
    )
    api = await user_browser.get("/api/no/such/thing")
    assert api.status_code == 404 and api.json() == {"status_code": 404, "detail": "Not Found"}
    not_an_id = await user_browser.get("/predictions/not-a-uuid")
    assert not_an_id.status_code == 404 and is_full_page(not_an_id) and "nothing at this address" in not_an_id.text


async def test_an_unexpected_error_is_a_500_page_without_details(
    user_browser: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: Any) -> Any:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(labels, "search", broken)
    page = await user_browser.get("/labels/options", params={"correct_label": "cat"})
    assert page.status_code == 500 and is_full_page(page) and "Something went wrong" in page.text
    assert "secret internals" not in page.text
    swapped = await user_browser.get("/labels/options", params={"correct_label": "cat"}, headers=HX)
    assert swapped.status_code == 500 and not is_full_page(swapped) and 'role="alert"' in swapped.text
    api = await user_browser.get("/api/labels", params={"q": "cat"})
    assert api.status_code == 500 and api.json()["detail"] == "Internal server error"


async def test_only_admins_see_that_a_result_came_from_the_cache(
    user_browser: Client, app: Litestar, settings: Settings
) -> None:
    user = await user_of(user_browser)
    prediction = await make_prediction(user, cached=True)
    own = await user_browser.get(f"/predictions/{prediction.id}")
    assert own.status_code == 200 and "Cached" not in own.text
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50002))  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as admin:
        assert (await log_in_page(admin, settings.admin_email, settings.admin_password)).status_code == 303
        seen = await admin.get(f"/predictions/{prediction.id}")
    assert seen.status_code == 200 and "Yes: this image was seen before" in seen.text
