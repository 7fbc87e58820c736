"""Feedback on predictions and the class-name search, over the JSON API."""

from __future__ import annotations

import httpx
import pytest

from app import labels
from tests import samples
from tests.conftest import CountingClassifier
from tests.helpers import sign_up

Client = httpx.AsyncClient


async def classified(client: Client, headers: dict[str, str], seed: int) -> dict[str, object]:
    response = await client.post("/api/predictions", headers=headers, files={"file": ("a.jpg", samples.photo(seed))})
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


async def test_feedback_is_stored_and_editable(
    client: Client, auth: dict[str, str], worker: CountingClassifier
) -> None:
    prediction = await classified(client, auth, 900)
    url = f"/api/predictions/{prediction['id']}/feedback"
    first = await client.post(url, headers=auth, json={"is_correct": True})
    assert first.status_code == 200, first.text
    assert first.json()["is_correct"] is True and first.json()["correct_label"] is None
    tabby = labels.search("tabby")[0]
    second = await client.post(
        url, headers=auth, json={"is_correct": False, "correct_label": tabby.name, "comment": " a cat "}
    )
    assert second.status_code == 200
    body = second.json()
    assert (body["id"], body["correct_label"], body["correct_wnid"], body["comment"]) == (
        first.json()["id"],
        tabby.name,
        tabby.wnid,
        "a cat",
    )
    by_wnid = await client.post(url, headers=auth, json={"is_correct": False, "correct_label": tabby.wnid})
    assert by_wnid.json()["correct_label"] == tabby.name
    mine = (await client.get("/api/feedback", headers=auth)).json()
    assert mine["total"] == 1 and mine["items"][0]["prediction_id"] == prediction["id"]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({}, 400),
        ({"is_correct": "maybe"}, 400),
        ({"is_correct": False, "correct_label": "no such class"}, 400),
        ({"is_correct": True, "comment": "x" * 1001}, 400),
        ({"is_correct": True, "extra": 1}, 400),
    ],
)
async def test_bad_feedback_is_400(
    client: Client, auth: dict[str, str], worker: CountingClassifier, body: dict[str, object], status: int
) -> None:
    prediction = await classified(client, auth, 901)
    response = await client.post(f"/api/predictions/{prediction['id']}/feedback", headers=auth, json=body)
    assert response.status_code == status, response.text
    assert response.json()["detail"]


async def test_feedback_on_someone_elses_prediction_is_404(
    client: Client, auth: dict[str, str], worker: CountingClassifier
) -> None:
    prediction = await classified(client, auth, 902)
    stranger = await sign_up(client)
    response = await client.post(
        f"/api/predictions/{prediction['id']}/feedback", headers=stranger, json={"is_correct": True}
    )
    assert response.status_code == 404


async def test_admin_sees_all_feedback_with_filters(
    client: Client, auth: dict[str, str], admin_auth: dict[str, str], worker: CountingClassifier
) -> None:
    right = await classified(client, auth, 903)
    wrong = await classified(client, auth, 904)
    await client.post(f"/api/predictions/{right['id']}/feedback", headers=auth, json={"is_correct": True})
    await client.post(f"/api/predictions/{wrong['id']}/feedback", headers=auth, json={"is_correct": False})
    everyone = (await client.get("/api/feedback", headers=admin_auth, params={"per_page": "100"})).json()
    ids = {item["prediction_id"] for item in everyone["items"]}
    assert {right["id"], wrong["id"]} <= ids
    wrong_only = (
        await client.get("/api/feedback", headers=admin_auth, params={"wrong_only": "true", "per_page": "100"})
    ).json()
    assert all(item["is_correct"] is False for item in wrong_only["items"])
    assert wrong["id"] in {item["prediction_id"] for item in wrong_only["items"]}
    by_label = (await client.get("/api/feedback", headers=admin_auth, params={"label": str(wrong["label"])})).json()
    assert wrong["id"] in {item["prediction_id"] for item in by_label["items"]}


async def test_label_search(client: Client) -> None:
    response = await client.get("/api/labels", params={"q": "retriever", "limit": 50})
    assert response.status_code == 200
    names = [item["name"].lower() for item in response.json()]
    assert names and all("retriever" in name for name in names)
    assert len((await client.get("/api/labels", params={"limit": 1000})).json()) == 1000
    assert (await client.get("/api/labels", params={"limit": 0})).status_code == 400
    assert (await client.get("/api/labels", params={"q": "zzzzzz"})).json() == []
