"""A query parameter a route takes as one value, given more than once, is a 400 that names it (JSON for the API,
an error page for people): Litestar took one of the values and said nothing, so `per_page=10&per_page=100000`
answered 10 a page and the client could not tell which value it got. One taken as a list still takes repeats."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import uuid4

import httpx
import pytest
from litestar import Litestar, get
from litestar.params import QueryParameter
from litestar.routes import HTTPRoute
from litestar.testing import AsyncTestClient

from app.models import Collection, CollectionStatus, User
from app.web.queries import ONE_VALUE, REPEATED, OneValueQueries, refuse_repeats
from tests.helpers import sign_up, unique_email
from tests.page_helpers import HX, Client, user_of


def assert_json_names(response: httpx.Response, *names: str) -> None:
    assert response.status_code == 400, (response.status_code, response.text[:500])
    body = response.json()
    assert body["status_code"] == 400 and body["detail"].startswith("Validation failed for GET ")
    assert body["extra"] == [{"message": REPEATED, "key": name, "source": "query"} for name in names]


def assert_page_names(response: httpx.Response, *names: str) -> None:
    assert response.status_code == 400, (response.status_code, response.text[:500])
    assert "text/html" in response.headers["content-type"]
    for name in names:
        assert f"{name}: {REPEATED}" in response.text, response.text[:1000]


@pytest.mark.parametrize(
    "query",
    [
        "/api/predictions?page=1&page=2",
        "/api/predictions?per_page=10&per_page=100000",
        f"/api/predictions?before={uuid4()}&before={uuid4()}",
        "/api/feedback?label=a&label=b",
        "/api/feedback?wrong_only=true&wrong_only=false",
        "/api/collections?per_page=1&per_page=2",
        "/api/labels?q=cat&q=dog",
    ],
)
async def test_a_repeated_parameter_of_the_api_is_400_naming_it(client: httpx.AsyncClient, query: str) -> None:
    auth = await sign_up(client)
    name = query.partition("?")[2].partition("=")[0]
    assert_json_names(await client.get(query, headers=auth), name)
    # Given once, the value is taken (a `before` not in the list is 404, as it says).
    assert (await client.get(query.rpartition("&")[0], headers=auth)).status_code in {200, 404}


async def test_every_repeated_one_value_parameter_is_named_and_the_rest_kept(client: httpx.AsyncClient) -> None:
    auth = await sign_up(client)
    response = await client.get("/api/predictions?per_page=5&page=1&per_page=6&page=2&per_page=7", headers=auth)
    assert_json_names(response, "page", "per_page")
    # An unknown parameter is ignored, as it was, repeated or not.
    assert (await client.get("/api/predictions?x=1&x=2", headers=auth)).status_code == 200


async def test_a_repeated_parameter_of_a_collection_is_400_naming_it(client: httpx.AsyncClient) -> None:
    email = unique_email()
    auth = await sign_up(client, email)
    collection = await Collection.create(user=await User.get(email=email), name="mine", status=CollectionStatus.DONE)
    path = f"/api/collections/{collection.id}"
    assert_json_names(await client.get(f"{path}?status=done&status=failed", headers=auth), "status")
    assert (await client.get(f"{path}?status=done", headers=auth)).status_code == 200


@pytest.mark.parametrize(
    "query",
    [
        "/history?page=1&page=2",
        f"/history/collections?before={uuid4()}&before={uuid4()}",
        "/labels/options?correct_label=a&correct_label=b",
        "/login?next=/history&next=/",
    ],
)
async def test_a_repeated_parameter_of_a_page_is_400_naming_it(user_browser: Client, query: str) -> None:
    name = query.partition("?")[2].partition("=")[0]
    for headers in ({}, HX):
        assert_page_names(await user_browser.get(query, headers=headers), name)
    assert (await user_browser.get(query.rpartition("&")[0])).status_code in {200, 404}
    assert (await user_browser.get("/history")).status_code == 200  # still signed in


async def test_a_repeated_filter_of_a_collection_page_is_400_naming_it(user_browser: Client) -> None:
    collection = await Collection.create(user=await user_of(user_browser), name="c", status=CollectionStatus.DONE)
    path = f"/collections/{collection.id}"
    assert_page_names(await user_browser.get(f"{path}?status=done&status=failed&label=a&label=b"), "label", "status")
    assert (await user_browser.get(f"{path}?status=done&label=a")).status_code == 200


async def test_a_repeated_filter_of_an_admin_page_is_400_naming_it(admin_browser: Client) -> None:
    for path in ("/admin/feedback", "/admin/feedback.csv"):
        assert_page_names(await admin_browser.get(f"{path}?label=a&label=b"), "label")
        assert (await admin_browser.get(f"{path}?label=a")).status_code == 200
    assert_page_names(await admin_browser.get("/admin/users?page=1&page=1"), "page")


async def test_every_route_without_path_parameters_refuses_each_repeated_one(
    app: Litestar, client: httpx.AsyncClient, admin_auth: dict[str, str], admin_browser: Client
) -> None:
    """Every GET route and each of its one-value parameters, so that no route is left out: the API with the
    admin's token, the pages with the admin's cookie."""
    checked: set[str] = set()
    for route in app.routes:
        if not isinstance(route, HTTPRoute) or route.path_parameters:
            continue
        for handler in route.route_handlers:
            if "GET" not in handler.http_methods:
                continue
            for name in handler.opt[ONE_VALUE]:
                query = f"{route.path}?{name}=1&{name}=1"
                if route.path.startswith(("/api", "/health", "/metrics", "/schema")):
                    assert_json_names(await client.get(query, headers=admin_auth), name)
                else:
                    assert_page_names(await admin_browser.get(query), name)
                checked.add(name)
    assert {"page", "per_page", "before", "label", "wrong_only", "q", "limit", "next", "correct_label"} <= checked


@get("/tagged", sync_to_thread=False)
def tagged(
    tag: Annotated[list[str], QueryParameter()], page: Annotated[int, QueryParameter(ge=1)] = 1
) -> dict[str, Any]:
    return {"tag": tag, "page": page}


async def test_a_parameter_taken_as_a_list_still_takes_repeats() -> None:
    """No route of the service takes a list today: a route that does keeps its repeats."""
    app = Litestar([tagged], plugins=[OneValueQueries()], before_request=refuse_repeats)
    async with AsyncTestClient(app) as test_client:
        response = await test_client.get("/tagged?tag=a&tag=b&page=2")
        assert response.status_code == 200 and response.json() == {"tag": ["a", "b"], "page": 2}
        refused = await test_client.get("/tagged?tag=a&tag=b&page=2&page=3")
        assert refused.status_code == 400 and refused.json()["extra"][0]["key"] == "page"
