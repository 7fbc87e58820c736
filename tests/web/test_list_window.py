"""Lists reach back LIST_WINDOW items: a page past them is refused, and the count stops there. The window is
made small here: filled to 10,001 items, a person's single images turned PostgreSQL's plans of later tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

import httpx
import pytest

from app.models import Prediction, Status, User
from app.web import deps
from app.web.pages.history import HISTORY_PER_PAGE
from tests.helpers import sign_up, unique_email
from tests.page_helpers import sign_up_page

Client = httpx.AsyncClient
WINDOW = 60


@pytest.fixture(autouse=True)
def small_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(deps, "LIST_WINDOW", WINDOW)


async def fill(email: str, count: int) -> None:
    """`count` finished predictions of the account `email`, made directly."""
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
