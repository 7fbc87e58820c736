"""The OpenAPI schema at /schema is a contract: every JSON body named, every error a route can answer documented
in the one error shape with its headers, and the bearer scheme only where a token is needed."""

from __future__ import annotations

import re
from typing import Any
from uuid import uuid4

import httpx
import pytest
from litestar import Litestar
from litestar.routes import HTTPRoute

from app.web.limits import MAX_TARGET_BYTES

Client = httpx.AsyncClient
HTTP_METHODS = {"get", "put", "post", "delete", "patch"}


@pytest.fixture
async def spec(client: Client) -> dict[str, Any]:
    response = await client.get("/schema/openapi.json")
    assert response.status_code == 200, response.text
    found: dict[str, Any] = response.json()
    return found


def operations(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """("METHOD path", operation) of every API and health route."""
    return [
        (f"{method.upper()} {path}", operation)
        for path, item in spec["paths"].items()
        if path.startswith(("/api/", "/health/"))
        for method, operation in item.items()
        if method in HTTP_METHODS
    ]


def component(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """The component a `$ref` schema points to; fails on an inline schema."""
    assert set(schema) == {"$ref"}, f"not a reference to a component: {schema}"
    name = schema["$ref"].removeprefix("#/components/schemas/")
    found: dict[str, Any] = spec["components"]["schemas"][name]
    return found


def described(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """The component of a JSON body: the schema itself, or the items of an array."""
    if schema.get("type") == "array":
        return component(spec, schema["items"])
    return component(spec, schema)


def properties(spec: dict[str, Any], name: str) -> set[str]:
    return set(spec["components"]["schemas"][name]["properties"])


async def test_every_json_route_documents_its_success_body(spec: dict[str, Any]) -> None:
    found = operations(spec)
    assert len(found) >= 17, [name for name, _ in found]
    for name, operation in found:
        successes = {code: r for code, r in operation["responses"].items() if code.startswith("2")}
        assert successes, f"{name} documents no success response"
        for code, response in successes.items():
            content = response.get("content", {})
            assert content, f"{name} {code} has no body"
            if "application/json" not in content:
                continue  # the CSV download
            body = described(spec, content["application/json"]["schema"])
            assert body.get("properties"), f"{name} {code} answers an object with no properties: {body}"


async def test_the_models_name_every_field(spec: dict[str, Any]) -> None:
    assert properties(spec, "PredictionOut") == {
        "id", "status", "label", "wnid", "score", "top5", "model", "untrained", "cached",
        "latency_ms", "image_sha256", "file_name", "error", "created_at", "finished_at",
    }  # fmt: skip
    assert properties(spec, "TopOut") == {"label", "wnid", "score"}
    assert properties(spec, "ModelOut") == {"name", "version", "weights", "trained"}
    assert properties(spec, "CollectionDetail") == {
        "id", "name", "created_at", "status", "progress", "error", "results", "page", "per_page", "matching",
    }  # fmt: skip
    assert properties(spec, "Progress") == {"total", "queued", "done", "failed"}
    assert properties(spec, "Readiness") == {
        "database", "redis", "workers", "queue_depth", "status", "backends", "model", "other_workers",
    }  # fmt: skip
    assert properties(spec, "WorkerBackend") == {"worker", "backend", "engine", "choice"}


async def test_pages_and_lists_point_at_their_items(spec: dict[str, Any]) -> None:
    page = spec["components"]["schemas"]["PredictionPage"]["properties"]
    assert page["items"] == {"type": "array", "items": {"$ref": "#/components/schemas/PredictionOut"}}
    labels = spec["paths"]["/api/labels"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert described(spec, labels) == spec["components"]["schemas"]["LabelOut"]
    queued = spec["paths"]["/api/predictions"]["post"]["responses"]["202"]["content"]["application/json"]
    assert queued["schema"] == {"$ref": "#/components/schemas/PredictionOut"}


# ---- errors: every status each route can answer, in the one error shape, with its headers ----------------

# What each operation can answer besides success, from its code paths: 400, 414 and 431 anywhere
# (app/web/limits.py, validation); 429 anywhere but the probes, for a sender with as many requests open as it
# may (limits.RequestsOpen); 401 without a valid token; 404 for an id that is not the caller's (a list's
# `before` too); 409 a taken email or an unfinished prediction; 413 a body, image or collection too large, or a
# storage quota; 415 not an image; 429 throttles and quotas; 503 a dependency down (every signed-in request
# reads the user), no worker, a full queue; 504 no result in time; 507 the image store full.
ANYWHERE = {400, 414, 431}
SIGNED_IN = ANYWHERE | {401, 429, 503}
EXPECTED_ERRORS = {
    "POST /api/auth/register": ANYWHERE | {409, 413, 429, 503},
    "POST /api/auth/login": ANYWHERE | {401, 413, 429, 503},
    "POST /api/auth/logout": SIGNED_IN,
    "GET /api/users/me": SIGNED_IN,
    "POST /api/predictions": SIGNED_IN | {413, 415, 504, 507},
    "GET /api/predictions": SIGNED_IN | {404},
    "GET /api/predictions/{prediction_id}": SIGNED_IN | {404},
    "POST /api/predictions/lookup": SIGNED_IN | {413},
    "POST /api/predictions/{prediction_id}/feedback": SIGNED_IN | {404, 409, 413},
    "GET /api/feedback": SIGNED_IN | {404},
    "GET /api/labels": ANYWHERE | {429},
    "POST /api/collections": SIGNED_IN | {413, 415, 507},
    "GET /api/collections": SIGNED_IN | {404},
    "GET /api/collections/{collection_id}": SIGNED_IN | {404},
    "GET /api/collections/{collection_id}/results.csv": SIGNED_IN | {404},
    "GET /health/live": ANYWHERE,
    "GET /health/ready": ANYWHERE | {503},
}
ERROR_REF = {"$ref": "#/components/schemas/ErrorOut"}


def errors_of(operation: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {int(code): r for code, r in operation["responses"].items() if not code.startswith("2")}


def header(spec: dict[str, Any], response: dict[str, Any], name: str) -> dict[str, Any] | None:
    found = response.get("headers", {}).get(name)
    if found and "$ref" in found:
        found = spec["components"]["headers"][found["$ref"].removeprefix("#/components/headers/")]
    return found


async def test_every_status_a_route_can_answer_is_documented(spec: dict[str, Any]) -> None:
    documented = {name: set(errors_of(operation)) for name, operation in operations(spec)}
    assert documented == EXPECTED_ERRORS


async def test_an_over_long_address_is_a_documented_414(
    spec: dict[str, Any], client: Client, auth: dict[str, str]
) -> None:
    """Found by Schemathesis with more examples: RequestLimits answers 414 on every route, which none listed."""
    for name, operation in operations(spec):
        method, path = name.split(" ")
        path = re.sub(r"\{[^}]+\}", str(uuid4()), path)
        response = await client.request(method, f"{path}?q={'a' * MAX_TARGET_BYTES}", headers=auth)
        assert response.status_code == 414, name
        assert 414 in errors_of(operation), name


async def test_errors_have_one_named_schema(spec: dict[str, Any]) -> None:
    error = spec["components"]["schemas"]["ErrorOut"]
    assert set(error["properties"]) == {"status_code", "detail", "extra"}
    assert set(error["required"]) == {"status_code", "detail"}
    for name, operation in operations(spec):
        for code, response in errors_of(operation).items():
            schema = response["content"]["application/json"]["schema"]
            if name == "GET /health/ready" and code == 503:
                assert schema == {"$ref": "#/components/schemas/Readiness"}
            else:
                assert schema == ERROR_REF, f"{name} {code}"
            assert response["description"] and response["description"] != "Additional response", f"{name} {code}"


async def test_retry_after_and_location_are_documented_where_they_are_sent(spec: dict[str, Any]) -> None:
    for name, operation in operations(spec):
        for code, response in operation["responses"].items():
            retry_after = header(spec, response, "Retry-After")
            if code in {"429", "503"}:
                assert retry_after, f"{name} {code}"
                assert retry_after["required"] and retry_after["schema"]["type"] == "integer"
            else:
                assert not retry_after, f"{name} {code}"
            location = header(spec, response, "Location")
            assert bool(location) == (code in {"202", "504"}), f"{name} {code}"


async def test_not_ready_says_when_to_ask_again(client: Client, no_worker: None) -> None:
    """Every 503 carries Retry-After, the readiness check's too (as documented)."""
    response = await client.get("/health/ready")
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) > 0


async def test_error_bodies_have_the_documented_shape(client: Client, auth: dict[str, str]) -> None:
    missing = await client.get(f"/api/predictions/{uuid4()}", headers=auth)
    assert missing.status_code == 404 and missing.json() == {"status_code": 404, "detail": "No such prediction"}
    invalid = await client.post("/api/auth/login", json={"email": 1})
    assert invalid.status_code == 400 and set(invalid.json()) == {"status_code", "detail", "extra"}


# ---- the lock: the bearer scheme exactly on the routes the auth middleware guards -----------------------------


def guarded(app: Litestar) -> dict[str, bool]:
    """("METHOD path", whether the auth config asks it for a token) of every documented route."""
    auth = app.state.jwt_auth
    found = {}
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for method, (handler, _) in route.route_handler_map.items():
            if not handler.resolve_include_in_schema():
                continue
            excluded = handler.opt.get(auth.exclude_opt_key) or any(re.search(p, route.path) for p in auth.exclude)
            found[f"{method} {route.path_format}"] = not excluded
    return found


async def test_the_lock_shows_exactly_where_a_token_is_needed(spec: dict[str, Any], app: Litestar) -> None:
    assert "security" not in spec  # not on every operation
    bearer: list[dict[str, list[str]]] = [{"BearerToken": []}]
    assert {name: operation.get("security") == bearer for name, operation in operations(spec)} == guarded(app)
    assert {name for name, needs in guarded(app).items() if not needs} == {
        "POST /api/auth/register", "POST /api/auth/login", "GET /api/labels", "GET /health/live", "GET /health/ready",
    }  # fmt: skip
    scheme = spec["components"]["securitySchemes"]["BearerToken"]
    assert scheme == {"type": "http", "scheme": "bearer", "bearerFormat": "JWT", "description": scheme["description"]}


async def test_a_request_without_a_token_is_refused_exactly_where_the_lock_shows(
    spec: dict[str, Any], client: Client
) -> None:
    for name, operation in operations(spec):
        method, path = name.split(" ")
        path = re.sub(r"\{[^}]+\}", str(uuid4()), path)
        response = await client.request(method, path)
        assert (response.status_code == 401) == ("security" in operation), f"{name}: {response.status_code}"
