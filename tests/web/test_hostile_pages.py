"""Hostile and careless input to the HTML pages and their forms (the JSON API has its own corpus in
test_hostile_requests.py, and Schemathesis): each gets a clear 4xx page or fragment, or a redirect to sign in,
never a 5xx or a look inside; nothing bad is stored; and nobody sees another person's items."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from uuid import uuid4

import httpx
import pytest
from litestar import Litestar
from litestar._kwargs import extractors

from app.models import Collection, CollectionStatus, Feedback, Prediction, User
from app.settings import Settings
from app.web.limits import MAX_FORM_BYTES
from tests import samples
from tests.helpers import from_address, unique_email
from tests.page_helpers import HX, Client, csrf, is_full_page, log_in_page, make_prediction, sign_up_page, user_of
from tests.web.test_hostile_requests import INTERNALS

FORM = {"content-type": "application/x-www-form-urlencoded"}
# What a person may be answered: the page, a redirect (signing in, or an admin page to a user), or an error page.
PAGE_ANSWERS = {200, 303, 400, 403, 404, 405, 413, 414}


def assert_clean(response: httpx.Response, *secrets: str) -> None:
    """No server error, no internals, and none of another person's data."""
    assert response.status_code < 500, (response.status_code, response.text[:500])
    assert not any(marker in response.text for marker in INTERNALS), response.text[:500]
    assert not any(secret in response.text for secret in secrets), response.text[:500]


@dataclass
class World:
    """A signed-in person's prediction and collection, and another person with theirs."""

    mine: Prediction
    my_collection: Collection
    other: User
    theirs: Prediction
    their_collection: Collection

    @property
    def secrets(self) -> tuple[str, ...]:
        return (self.other.email, self.their_collection.name)


@pytest.fixture
async def world(app: Litestar, user_browser: Client) -> World:
    async with from_address(app, "127.0.0.1") as other_browser:
        await sign_up_page(other_browser)
        other = await user_of(other_browser)
    me = await user_of(user_browser)
    return World(
        await make_prediction(me),
        await Collection.create(user=me, name="mine", status=CollectionStatus.DONE),
        other,
        await make_prediction(other),
        await Collection.create(user=other, name=f"theirs-{uuid4().hex[:8]}", status=CollectionStatus.DONE),
    )


@pytest.fixture
async def another_admin(app: Litestar, settings: Settings) -> AsyncIterator[Client]:
    """An admin signed in beside `user_browser` (which has the `browser`)."""
    async with from_address(app, "127.0.0.1") as admin:
        assert (await log_in_page(admin, settings.admin_email, settings.admin_password)).status_code == 303
        yield admin


def hostile_queries(world: World) -> list[str]:
    theirs = world.their_collection
    return [
        "page=",
        "page=0",
        "page=-1",
        "page=1.5",
        "page=abc",
        "page=1e3",
        "page=%EF%BC%91",  # a fullwidth 1
        "page=99999999999999999999",
        "page=1000000",
        "page=1&page=2",
        "page=%FF",
        "before=",
        "before=abc",
        "before=1",
        f"before={uuid4()}",
        f"before={world.theirs.id}",
        f"before={theirs.id}",
        "status=bogus",
        "status=done&status=failed",
        "label=" + "x" * 101,
        "label=%FF%FE",
        "wrong_only=maybe",
        "next=//evil.example",
        "%FF=%C0%80",
        "&".join(f"p{i}=1" for i in range(1500)),  # past the address's bound: 414
        "&".join("a" for _ in range(3500)),  # thousands of parameters within it
    ]


def page_paths(world: World) -> list[str]:
    theirs = world.their_collection
    return [
        "/",
        "/login",
        "/register",
        "/history",
        "/history/collections",
        f"/predictions/{world.mine.id}",
        f"/predictions/{world.theirs.id}",
        f"/predictions/{uuid4()}",
        "/predictions/abc",
        f"/predictions/{world.theirs.id}/image",
        f"/collections/{world.my_collection.id}",
        f"/collections/{theirs.id}",
        f"/collections/{theirs.id}/results.csv",
        "/collections/1",
        "/labels/options",
        "/admin",
        "/admin/users",
        "/admin/feedback",
        "/admin/feedback.csv",
    ]


async def test_every_page_answers_hostile_queries_with_a_page_or_a_4xx(user_browser: Client, world: World) -> None:
    """Each page with each hostile query, as a page and as an htmx swap: never a 5xx, never another person's
    items (theirs are 404, admin pages 403), a 4xx as a page or a fragment as asked, and still signed in."""
    for path in page_paths(world):
        for query in hostile_queries(world):
            for headers in ({}, HX):
                response = await user_browser.get(f"{path}?{query}", headers=headers)
                what = (path, query[:40], headers, response.status_code)
                assert_clean(response, *world.secrets)
                assert response.status_code in PAGE_ANSWERS, what
                if response.status_code == 303:  # only a signed-in person's sign-in pages lead on
                    assert path in ("/login", "/register"), what
                if response.status_code >= 400:
                    assert is_full_page(response) != bool(headers), what
                    assert response.text.strip(), what
        assert (await user_browser.get("/history")).status_code == 200, f"signed out by {path}"


# Not HEAD: the served app answers it as GET (app/web/server.HeadAsGet), which the test client's app is not.
@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "TRACE", "PROPFIND"])
async def test_unsupported_methods_on_pages_are_405(user_browser: Client, world: World, method: str) -> None:
    for path in page_paths(world):
        response = await user_browser.request(method, path)
        assert_clean(response, *world.secrets)
        assert response.status_code in {404, 405}, (path, response.status_code)


@pytest.mark.parametrize("path", ["/admin", "/admin/users", "/admin/feedback", "/admin/status", "/admin/feedback.csv"])
async def test_options_on_an_admin_page_keeps_the_session(
    user_browser: Client, another_admin: Client, path: str
) -> None:
    """Found by this corpus: OPTIONS skips authentication, so the admin pages' guard found no one signed in and
    answered 401, which a page turns into a redirect to sign in that clears the session's cookies: one OPTIONS
    request signed the person (an admin too) out. Now it is the Allow header, as on every other page."""
    for browser in (user_browser, another_admin):
        response = await browser.options(path)
        assert response.status_code == 204 and "GET" in response.headers["allow"], response.status_code
        assert not response.headers.get_list("set-cookie"), response.headers.get_list("set-cookie")
        assert (await browser.get("/history")).status_code == 200
    assert (await another_admin.get(path)).status_code == 200
    assert (await user_browser.get(path)).status_code == 403


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("/history?page=abc", "page: Expected `int`, got `str`"),
        ("/history?page=0", "page: Expected `int` &gt;= 1"),
        ("/history/collections?before=x", "before: Invalid UUID"),
        ("/labels/options?correct_label=" + "x" * 101, "correct_label: Expected `str` of length &lt;= 100"),
    ],
)
async def test_a_bad_value_is_named_on_the_page(user_browser: Client, query: str, says: str) -> None:
    """Found by this corpus: the JSON named the field and what was wrong with it, but a page said only
    "Validation failed for GET /history?page=abc", and which value, or why, was left to guess."""
    for headers in ({}, HX):
        response = await user_browser.get(query, headers=headers)
        assert response.status_code == 400 and says in response.text, response.text[:500]


def bad_forms(token: str, email: str) -> dict[str, tuple[dict[str, Any], int]]:
    """Requests a form route may get, but not from its own form: keyword arguments for httpx, and the status."""
    fields = {"email": email, "password": "correct horse", "verdict": "correct", "comment": "fine"}
    encoded = "&".join(f"{k}={v}" for k, v in fields.items())
    in_header = {"X-CSRFToken": token}
    return {
        "no CSRF token": ({"data": fields}, 403),
        "a wrong CSRF token": ({"data": {**fields, "_csrf_token": "0" * 64}}, 403),
        "a wrong CSRF token first": ({"content": f"_csrf_token=x&_csrf_token={token}&{encoded}", "headers": FORM}, 403),
        "JSON": ({"json": fields, "headers": in_header}, 400),
        "a JSON array": ({"json": [fields], "headers": in_header}, 400),
        "plain text": ({"content": encoded, "headers": {"content-type": "text/plain", **in_header}}, 400),
        "no content type": ({"content": encoded, "headers": in_header}, 400),
        "no fields": ({"data": {"_csrf_token": token}}, 400),
        "empty values": ({"data": {k: "" for k in fields} | {"_csrf_token": token}}, 400),
        "repeated fields": ({"content": f"_csrf_token={token}&{encoded}&{encoded}", "headers": FORM}, 400),
        "unknown fields only": ({"data": {"_csrf_token": token, "is_admin": "true", "user_id": "1"}}, 400),
        "bytes not UTF-8": ({"content": f"_csrf_token={token}&{encoded}%FF", "headers": FORM}, 400),
        "a NUL in each": ({"content": f"_csrf_token={token}&{encoded.replace('=', '=%00')}", "headers": FORM}, 400),
        "too many fields": (
            {"content": f"_csrf_token={token}&" + "&".join(f"f{i}=1" for i in range(30)), "headers": FORM},
            400,
        ),
        "too large": ({"data": {**fields, "_csrf_token": token, "comment": "c" * 70_000}}, 413),
        "multipart without a file": ({"files": {"_csrf_token": (None, token), "name": (None, "x")}}, 400),
        "a file field as text": (
            {"files": {"_csrf_token": (None, token), "file": (None, "x"), "files": (None, "y")}},
            400,
        ),
        "multipart without a boundary": (
            {"content": b"x", "headers": {"content-type": "multipart/form-data", **in_header}},
            400,
        ),
    }


FORM_ROUTES = ["/login", "/register", "feedback", "/"]
BAD_FORMS = list(bad_forms("", ""))


@pytest.mark.parametrize("route", FORM_ROUTES)
@pytest.mark.parametrize("case", BAD_FORMS)
async def test_a_bad_form_is_a_4xx_that_says_so_and_stores_nothing(
    app: Litestar, user_browser: Client, world: World, route: str, case: str
) -> None:
    """Each bad form, as a page and as an htmx swap: its 4xx, an error shown (by the field, or in a message),
    no account, prediction or feedback made, and the person still signed in."""
    path = f"/predictions/{world.mine.id}/feedback" if route == "feedback" else route
    users, predictions = await User.all().count(), await Prediction.all().count()
    for headers in ({}, HX):
        # Signing in and up are for the signed out: a browser of its own, whose CSRF cookie is fresh.
        async with from_address(app, "127.0.0.1") as signed_out:
            browser = signed_out if route in ("/login", "/register") else user_browser
            email = unique_email()
            kwargs, expected = bad_forms(await csrf(browser), email)[case]
            kwargs = {**kwargs, "headers": {**kwargs.get("headers", {}), **headers}}
            response = await browser.post(path, **kwargs)
        assert_clean(response, *world.secrets)
        assert response.status_code == expected, (response.status_code, response.text[:500])
        assert is_full_page(response) != bool(headers), response.text[:500]
        assert 'class="field-error"' in response.text or "alert-error" in response.text, response.text[:500]
        assert not await User.exists(email=email)
    assert (await User.all().count(), await Prediction.all().count()) == (users, predictions)
    assert not await Feedback.exists(prediction_id=world.mine.id)
    assert (await user_browser.get("/history")).status_code == 200  # still signed in


@pytest.mark.parametrize("content_type", ["text/plain", None])
async def test_a_body_of_another_type_is_no_form(
    user_browser: Client, world: World, monkeypatch: pytest.MonkeyPatch, content_type: str | None
) -> None:
    """Found by this corpus: sent as text/plain, or with no type, a form route's body skipped the form's
    bounds (`app/web/limits.parse_form`) and went to Litestar's own parser: the whole body (10 MB on the
    feedback route), read as Latin-1, however many fields. A sign-up so sent was taken, its name garbled."""
    parsed: list[int] = []
    parse = extractors.parse_url_encoded_form_data

    def measured(body: bytes) -> Any:
        parsed.append(len(body))
        return parse(body)

    monkeypatch.setattr(extractors, "parse_url_encoded_form_data", measured)
    headers = {"X-CSRFToken": await csrf(user_browser)} | ({"content-type": content_type} if content_type else {})
    body = b"verdict=correct&" + b"a&" * 5_000_000
    response = await user_browser.post(f"/predictions/{world.mine.id}/feedback", content=body, headers=headers)
    assert response.status_code == 400 and "Say whether the prediction was right" in response.text
    assert parsed == [] and not await Feedback.exists(prediction_id=world.mine.id)


@pytest.mark.parametrize("route", ["feedback", "/logout", "/login", "/register"])
async def test_a_form_sent_as_multipart_is_bounded_like_a_urlencoded_one(
    user_browser: Client, world: World, route: str
) -> None:
    """Found by this corpus: the feedback and sign-out forms took the app's 10 MB upload bound when sent as
    multipart (URL-encoded, they are refused past MAX_FORM_BYTES, as sign-in and sign-up are either way), and
    the feedback page echoed what it was sent: a 5 MB class name came back twice, a 10 MB page. Sign-in's and
    sign-up's 413 said "The upload is larger than this service accepts": it says what the bound is."""
    path = f"/predictions/{world.mine.id}/feedback" if route == "feedback" else route
    fields = {"_csrf_token": await csrf(user_browser), "verdict": "wrong", "correct_label": "l" * 2 * MAX_FORM_BYTES}
    for headers in ({}, HX):
        response = await user_browser.post(path, files={k: (None, v) for k, v in fields.items()}, headers=headers)
        assert response.status_code == 413 and len(response.content) < MAX_FORM_BYTES, response.status_code
        assert f"at most {MAX_FORM_BYTES // 1024} kB" in response.text
    assert (await user_browser.get("/history")).status_code == 200


@pytest.mark.parametrize("where", ["cookie", "header", "form field", "multipart field"])
@pytest.mark.parametrize("route", ["/login", "feedback"])
async def test_a_csrf_token_with_non_ascii_characters_is_refused(
    app: Litestar, user_browser: Client, world: World, where: str, route: str
) -> None:
    """Found by this corpus: CSRF tokens were compared by compare_digest, which raises TypeError for a str
    with a non-ASCII character, so such a token, in the cookie, the header or the form, was a 500, signed out
    (sign-in) or in (the session's own check, app/web/sessions.check_bound_csrf, too)."""
    path = f"/predictions/{world.mine.id}/feedback" if route == "feedback" else route
    async with from_address(app, "127.0.0.1") as signed_out:
        browser = signed_out if route == "/login" else user_browser
        token = await csrf(browser)
        odd = token[:-1] + "\u00e9"  # as long as a real one: its hash is compared
        fields = {"verdict": "correct", "email": "a@example.com", "password": "correct horse"}
        kwargs: dict[str, Any] = {"data": {**fields, "_csrf_token": token}}
        if where == "cookie":
            session = "; ".join(f"{k}={v}" for k, v in browser.cookies.items() if "csrf" not in k)
            kwargs["headers"] = {"cookie": f"{session}; csrftoken={odd}".encode()}
        elif where == "header":
            kwargs = {"data": fields, "headers": {"X-CSRFToken": odd.encode()}}
        elif where == "form field":
            kwargs = {"data": {**fields, "_csrf_token": odd}}
        else:
            kwargs = {"files": {k: (None, v) for k, v in {**fields, "_csrf_token": odd}.items()}}
        response = await browser.post(path, **kwargs)
    assert_clean(response)
    assert response.status_code == 403, response.status_code
    assert not await Feedback.exists(prediction_id=world.mine.id)


async def test_a_file_name_past_the_multipart_header_bound_is_not_called_too_many_parts(user_browser: Client) -> None:
    """Found by this corpus: the multipart parser refuses a part header over 4 kB (a long file name or folder
    path) with the same error as a form of too many parts, so one image was told "The form has more than 10008
    parts". It is now a 400 that says what was too long."""
    for headers in ({}, HX):
        files = {"file": ("a" * 5000 + ".jpg", samples.photo(4400), "image/jpeg")}
        form = {"_csrf_token": await csrf(user_browser)}
        response = await user_browser.post("/", files=files, data=form, headers=headers)
        assert response.status_code == 400 and "file name or folder path" in response.text, response.text[:500]
        assert "parts" not in response.text
