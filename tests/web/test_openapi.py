"""The OpenAPI schema at /schema describes every JSON response body, not a bare `{"type": "object"}`."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

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
    assert properties(spec, "ModelOut") == {"name", "version", "weights"}
    assert properties(spec, "CollectionDetail") == {
        "id", "name", "created_at", "status", "progress", "error", "results", "page", "per_page", "matching",
    }  # fmt: skip
    assert properties(spec, "Progress") == {"total", "queued", "done", "failed"}
    assert properties(spec, "Readiness") == {"database", "redis", "workers", "queue_depth", "status"}


async def test_pages_and_lists_point_at_their_items(spec: dict[str, Any]) -> None:
    page = spec["components"]["schemas"]["PredictionPage"]["properties"]
    assert page["items"] == {"type": "array", "items": {"$ref": "#/components/schemas/PredictionOut"}}
    labels = spec["paths"]["/api/labels"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert described(spec, labels) == spec["components"]["schemas"]["LabelOut"]
    queued = spec["paths"]["/api/predictions"]["post"]["responses"]["202"]["content"]["application/json"]
    assert queued["schema"] == {"$ref": "#/components/schemas/PredictionOut"}
