"""Lists reach back LIST_WINDOW items: a page past them is refused, and the count stops there; `before=<id>`
goes on from an item, so every item is in reach. The window is made small here: filled to 10,001 items, a
person's single images turned PostgreSQL's plans of later tests."""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest

from app.models import Collection, CollectionStatus, Feedback, Prediction, Status, User
from app.web import deps
from app.web.pages.history import COLLECTIONS_PER_PAGE, HISTORY_PER_PAGE
from tests.helpers import sign_up, unique_email
from tests.page_helpers import sign_up_page

Client = httpx.AsyncClient
WINDOW = 60


@pytest.fixture(autouse=True)
def small_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deps, "LIST_WINDOW", WINDOW)


async def fill(email: str, count: int, ties: int = 1) -> None:
    """`count` finished predictions of the account `email`, made directly; `ties` of them at each time (whole
    seconds: a time without microseconds must be found again as it was stored)."""
    user = await User.get(email=email)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    rows = [
        Prediction(
            id=uuid4(),
            user_id=user.id,
            image_sha256=f"{i:064x}",
            image_path="",
            model_name="resnet50",
            model_weights="random",
            status=Status.DONE,
            created_at=start + timedelta(seconds=i // ties),
        )
        for i in range(count)
    ]
    await Prediction.bulk_create(rows)


async def test_a_page_past_the_window_is_400_and_one_inside_it_answers(client: Client) -> None:
    auth = await sign_up(client)
    last = WINDOW // 20  # the last page of 20 inside the window
    inside = await client.get("/api/predictions", headers=auth, params={"page": last, "per_page": 20})
    assert inside.status_code == 200 and inside.json()["items"] == []  # nothing there, but within reach
    past = await client.get("/api/predictions", headers=auth, params={"page": last + 1, "per_page": 20})
    assert past.status_code == 400
    assert f"Lists reach back {WINDOW:,} items" in past.json()["detail"]
    for path in ("/api/collections", "/api/feedback"):
        assert (await client.get(path, headers=auth, params={"page": last + 1, "per_page": 20})).status_code == 400


async def test_a_list_longer_than_the_window_counts_up_to_it_and_says_there_is_more(client: Client) -> None:
    email = unique_email()
    auth = await sign_up(client, email)
    await fill(email, WINDOW + 1)
    first = (await client.get("/api/predictions", headers=auth, params={"per_page": 20})).json()
    assert first["total"] == WINDOW and first["more"] is True
    newest = await Prediction.filter(user__email=email).order_by("-created_at").first()
    assert newest is not None and first["items"][0]["id"] == str(newest.id)
    last = (await client.get("/api/predictions", headers=auth, params={"per_page": 20, "page": WINDOW // 20})).json()
    assert len(last["items"]) == 20 and last["more"] is True
    # One fewer: the count is exact, and nothing more.
    await Prediction.filter(id=newest.id).delete()
    exact = (await client.get("/api/predictions", headers=auth, params={"per_page": 1})).json()
    assert exact["total"] == WINDOW and exact["more"] is False


async def test_the_history_page_says_there_are_more_than_it_counted(browser: Client) -> None:
    email = await sign_up_page(browser)
    await fill(email, WINDOW + 1)
    page = await browser.get("/history")
    assert page.status_code == 200 and f"{WINDOW}+ predictions" in page.text
    pages = -(-WINDOW // HISTORY_PER_PAGE)
    assert f"Page 1 of {pages}" in page.text
    assert (await browser.get("/history", params={"page": pages})).status_code == 200
    past = await browser.get("/history", params={"page": pages + 1})
    assert past.status_code == 400 and "Lists reach back" in past.text


async def test_an_admins_feedback_list_is_not_bounded(client: Client, admin_auth: dict[str, str]) -> None:
    """Everyone's feedback: an admin reaches all of it (a person cannot grow it past their own)."""
    auth = await sign_up(client)
    past = {"page": WINDOW // 20 + 1, "per_page": 20}
    assert (await client.get("/api/feedback", headers=admin_auth, params=past)).status_code == 200
    assert (await client.get("/api/feedback", headers=auth, params=past)).status_code == 400


async def walk(client: Client, path: str, auth: dict[str, str], per_page: int) -> list[dict[str, Any]]:
    """Every item of a list, page after page by each page's `next_before`."""
    items: list[dict[str, Any]] = []
    params: dict[str, Any] = {"per_page": per_page}
    while True:
        page = await client.get(path, headers=auth, params=params)
        assert page.status_code == 200, page.text
        items += page.json()["items"]
        if page.json()["next_before"] is None:
            return items
        params["before"] = page.json()["next_before"]


def newest_first(items: list[dict[str, Any]], time: str, key: Callable[[Any], Any]) -> bool:
    """Whether `items` are strictly in their list's order: by `time`, then by id (times are shared), descending."""
    keys = [(datetime.fromisoformat(item[time]), key(item["id"])) for item in items]
    tied = len({t for t, _ in keys}) < len(keys)  # the ids had to break ties
    return tied and keys == sorted(keys, reverse=True) and len(set(keys)) == len(keys)


async def fill_collections(user: User, count: int, start: datetime) -> None:
    """`count` empty collections of `user`, made directly, 4 at each time from `start` on."""
    await Collection.bulk_create(
        Collection(user_id=user.id, total=0, status=CollectionStatus.DONE, created_at=start + timedelta(seconds=i // 4))
        for i in range(count)
    )


async def test_before_reaches_every_prediction_once_in_order_past_the_window(client: Client) -> None:
    """Past the window the oldest predictions were out of reach: page after page by `before`, each comes once, in
    order, however a page's end cuts a group of equal times (3 at each time, 7 a page)."""
    email = unique_email()
    auth = await sign_up(client, email)
    await fill(email, WINDOW + 25, ties=3)
    walked = await walk(client, "/api/predictions", auth, per_page=7)
    made = {str(i) for i in await Prediction.filter(user__email=email).values_list("id", flat=True)}
    assert len(walked) == len(made) == WINDOW + 25 and {p["id"] for p in walked} == made
    assert newest_first(walked, "created_at", UUID)
    # `page` counts from the item, and so do `total` and `more`.
    after = {"before": walked[6]["id"], "per_page": 7}
    second = (await client.get("/api/predictions", headers=auth, params={**after, "page": 2})).json()
    assert [p["id"] for p in second["items"]] == [p["id"] for p in walked[14:21]]
    assert second["total"] == WINDOW and second["more"] is True
    near_the_end = {"before": walked[-11]["id"], "per_page": 20}
    last = (await client.get("/api/predictions", headers=auth, params=near_the_end)).json()
    assert [p["id"] for p in last["items"]] == [p["id"] for p in walked[-10:]]
    assert (last["total"], last["more"], last["next_before"]) == (10, False, None)


async def test_before_reaches_every_collection_and_feedback_once_in_order(client: Client) -> None:
    email = unique_email()
    auth = await sign_up(client, email)
    user = await User.get(email=email)
    start = datetime.now(UTC) - timedelta(days=1)
    await fill_collections(user, WINDOW + 5, start)
    collections = await walk(client, "/api/collections", auth, per_page=9)
    assert len(collections) == len({c["id"] for c in collections}) == WINDOW + 5
    assert newest_first(collections, "created_at", UUID)
    await fill(email, WINDOW + 5)
    ids = await Prediction.filter(user_id=user.id).values_list("id", flat=True)
    await Feedback.bulk_create(Feedback(prediction_id=i, user_id=user.id, is_correct=True) for i in ids)
    given = await Feedback.filter(user_id=user.id).order_by("id").values_list("id", flat=True)
    for n in range(0, len(given), 4):  # 4 at each time (saving a row sets its time: an update by query does not)
        await Feedback.filter(id__in=given[n : n + 4]).update(updated_at=start + timedelta(seconds=n))
    feedback = await walk(client, "/api/feedback", auth, per_page=9)
    assert sorted(f["id"] for f in feedback) == sorted(given)
    assert newest_first(feedback, "updated_at", int)


async def test_before_takes_an_item_of_the_callers_own_list_only(client: Client) -> None:
    """Another person's item, or an item of another list, is 404; an id of the wrong form 400, never a 500."""
    email, other = unique_email(), unique_email()
    auth = await sign_up(client, email)
    await sign_up(client, other)
    await fill(email, 1)
    await fill(other, 1)
    mine = await Prediction.get(user__email=email)
    theirs = await Prediction.get(user__email=other)
    their_feedback = await Feedback.create(prediction=theirs, user_id=theirs.user_id, is_correct=True)  # type: ignore[attr-defined]
    my_feedback = await Feedback.create(prediction=mine, user_id=mine.user_id, is_correct=True)  # type: ignore[attr-defined]
    wrong: dict[str, Any] = {"wrong_only": "true", "label": "tabby"}
    refused: list[tuple[str, Any, int, dict[str, Any]]] = [
        ("/api/predictions", theirs.id, 404, {}),
        ("/api/collections", mine.id, 404, {}),  # a prediction is no collection
        ("/api/feedback", their_feedback.id, 404, {}),
        ("/api/feedback", my_feedback.id, 404, wrong),  # mine, but not in that list
        ("/api/predictions", "not-an-id", 400, {}),
        ("/api/collections", "1", 400, {}),
        ("/api/feedback", mine.id, 400, {}),
        ("/api/feedback", 2**40, 400, {}),  # past PostgreSQL's INTEGER
        ("/api/feedback", 0, 400, {}),
    ]
    for path, before, status, params in refused:
        answer = await client.get(path, headers=auth, params={**params, "before": str(before)})
        assert answer.status_code == status, (path, before, answer.text)
        assert answer.json()["detail"], answer.text
    found = await client.get("/api/feedback", headers=auth, params={"before": str(my_feedback.id)})
    assert found.status_code == 200 and found.json()["items"] == []  # nothing after it, but in the list
    gone = await client.get("/api/predictions", headers=auth, params={"before": str(theirs.id)})
    assert "`before` takes the id of one of its items" in gone.json()["detail"]


async def test_the_history_page_goes_on_past_the_window_by_an_older_link(browser: Client) -> None:
    """The history's last page of the window showed '60+ predictions' and no way on: now its Older link goes on
    from its last image, to the oldest."""
    email = await sign_up_page(browser)
    await fill(email, WINDOW + 7, ties=4)
    pages = -(-WINDOW // HISTORY_PER_PAGE)
    last = await browser.get("/history", params={"page": pages})
    older = re.search(r'<a href="([^"]+)"[^>]*rel="next">Older', last.text)
    assert older is not None and "before=" in older[1], last.text
    on = await browser.get(html.unescape(older[1]))
    assert on.status_code == 200 and "7 older predictions" in on.text
    oldest = await Prediction.filter(user__email=email).order_by("created_at", "id").first()
    assert oldest is not None and f"/predictions/{oldest.id}" in on.text
    assert re.search(r'<a href="/history"[^>]*>← Newest</a>', on.text) and 'rel="next"' not in on.text


async def test_the_collections_page_goes_on_past_the_window_by_an_older_link(browser: Client) -> None:
    email = await sign_up_page(browser)
    await fill_collections(await User.get(email=email), WINDOW + 3, datetime.now(UTC) - timedelta(days=1))
    last = await browser.get("/history/collections", params={"page": -(-WINDOW // COLLECTIONS_PER_PAGE)})
    older = re.search(r'<a href="([^"]+)"[^>]*rel="next">Older', last.text)
    assert older is not None and "before=" in older[1], last.text
    on = await browser.get(html.unescape(older[1]))
    assert on.status_code == 200 and "3 older collections" in on.text and 'rel="next"' not in on.text
