"""Lists reach back LIST_WINDOW items: a page past them is refused, and the count stops there."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

import httpx
import pytest

from app.models import Prediction, Status, User
from app.web.deps import LIST_WINDOW
from app.web.pages.history import HISTORY_PER_PAGE
from tests.helpers import sign_up, unique_email
from tests.page_helpers import sign_up_page

Client = httpx.AsyncClient


async def fill(email: str, count: int) -> None:
    """`count` finished predictions of the account `email`, made directly: uploading them would take minutes."""
    user = await User.get(email=email)
    start = datetime.now(UTC) - timedelta(days=1)
    rows = [
        Prediction(
            id=uuid4(),
            user_id=user.id,
            image_sha256=f"{i:064x}",
            image_path="",
            model_name="resnet50",
            model_weights="random",
            status=Status.DONE,
            created_at=start + timedelta(seconds=i),
        )
        for i in range(count)
    ]
    await Prediction.bulk_create(rows, batch_size=1000)


async def test_a_page_past_the_window_is_400_and_one_inside_it_answers(client: Client) -> None:
    auth = await sign_up(client)
    last = LIST_WINDOW // 20  # the last page of 20 inside the window
    inside = await client.get("/api/predictions", headers=auth, params={"page": last, "per_page": 20})
    assert inside.status_code == 200 and inside.json()["items"] == []  # nothing there, but within reach
    past = await client.get("/api/predictions", headers=auth, params={"page": last + 1, "per_page": 20})
    assert past.status_code == 400
    assert f"Lists reach back {LIST_WINDOW:,} items" in past.json()["detail"]
    for path in ("/api/collections", "/api/feedback"):
        assert (await client.get(path, headers=auth, params={"page": last + 1, "per_page": 20})).status_code == 400


@pytest.mark.timeout(300)
async def test_a_list_longer_than_the_window_counts_up_to_it_and_says_there_is_more(client: Client) -> None:
    email = unique_email()
    auth = await sign_up(client, email)
    await fill(email, LIST_WINDOW + 1)
    first = (await client.get("/api/predictions", headers=auth, params={"per_page": 100})).json()
    assert first["total"] == LIST_WINDOW and first["more"] is True
    newest = await Prediction.filter(user__email=email).order_by("-created_at").first()
    assert newest is not None and first["items"][0]["id"] == str(newest.id)
    last = (await client.get("/api/predictions", headers=auth, params={"per_page": 100, "page": 100})).json()
    assert len(last["items"]) == 100 and last["more"] is True
    # One fewer: the count is exact, and nothing more.
    await Prediction.filter(id=newest.id).delete()
    exact = (await client.get("/api/predictions", headers=auth, params={"per_page": 1})).json()
    assert exact["total"] == LIST_WINDOW and exact["more"] is False


async def test_the_history_page_says_there_are_more_than_it_counted(browser: Client) -> None:
    email = await sign_up_page(browser)
    await fill(email, LIST_WINDOW + 1)
    page = await browser.get("/history")
    assert page.status_code == 200 and f"{LIST_WINDOW}+ predictions" in page.text
    pages = -(-LIST_WINDOW // HISTORY_PER_PAGE)
    assert f"Page 1 of {pages}" in page.text
    assert (await browser.get("/history", params={"page": pages})).status_code == 200
    past = await browser.get("/history", params={"page": pages + 1})
    assert past.status_code == 400 and "Lists reach back" in past.text
