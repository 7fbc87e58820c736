"""While no worker is alive (the first seconds after a start, nearly always), the pages tell people the
classifier is warming up, keep their image waiting and follow it until it is classified, with htmx or by
reloading themselves; the worker command is for admins only. The API still answers 503 with Retry-After
(tests/web/test_predictions.py). Refusals that say when to try again are tried again by the page's script."""

from __future__ import annotations

import re
from typing import Any

import pytest
from redis.asyncio import Redis

from app import predictions
from app.models import Prediction, Status, deferred
from app.settings import Settings
from app.worker.classifier import StandInClassifier
from tests import samples
from tests.conftest import reset_queue, running_worker
from tests.helpers import eventually
from tests.page_helpers import HX, Client, is_full_page, log_in_page, sign_up_page, upload_page

WORKER_COMMAND = "python -m app.worker"


async def waiting(name: str) -> Prediction:
    """The latest upload of that name (the browser tests upload files of the same names)."""
    found = await Prediction.filter(file_name=name).order_by("-created_at").first()
    assert found is not None, name
    return found


async def test_an_upload_waits_warming_up_and_is_classified_once_a_worker_starts(
    user_browser: Client, no_worker: None, redis: Redis, classifier: Any, settings: Settings
) -> None:
    response = await upload_page(user_browser, samples.photo(7101), name="early.jpg")
    assert response.status_code == 202 and not is_full_page(response)
    assert "Warming up…" in response.text
    assert "The classifier is warming up: your image will be classified in a moment" in response.text
    assert "checks again by itself" in response.text
    assert WORKER_COMMAND not in response.text and "No worker" not in response.text
    prediction = await waiting("early.jpg")
    assert prediction.status == Status.QUEUED and deferred(prediction)
    # The result asks for itself again (htmx), and keeps saying why it waits.
    assert f'hx-get="/predictions/{prediction.id}" hx-trigger="load delay:1500ms"' in response.text
    again = await user_browser.get(f"/predictions/{prediction.id}", headers=HX)
    assert again.status_code == 200 and "Warming up…" in again.text and WORKER_COMMAND not in again.text

    async with running_worker(redis, classifier, settings):

        async def classified() -> bool:
            await prediction.refresh_from_db()
            return prediction.status == Status.DONE

        await eventually(classified, seconds=20, what="the waiting image to be classified")
    done = await user_browser.get(f"/predictions/{prediction.id}", headers=HX)
    assert "Warming up" not in done.text and "load delay" not in done.text
    assert f">{prediction.label}</h2>" in done.text
    await reset_queue(redis)


async def test_a_worker_of_another_model_does_not_end_the_warming_up(
    user_browser: Client, no_worker: None, redis: Redis, settings: Settings
) -> None:
    """Found in review: the pages counted any live worker, so with only a worker of another model (which leaves
    this app's jobs) the waiting image's page stopped saying why it waits."""
    async with running_worker(redis, StandInClassifier("imagenet"), settings):
        response = await upload_page(user_browser, samples.photo(7105), name="other-model.jpg")
        assert response.status_code == 202 and "Warming up…" in response.text
        prediction = await waiting("other-model.jpg")
        again = await user_browser.get(f"/predictions/{prediction.id}", headers=HX)
    assert "Warming up…" in again.text
    await reset_queue(redis)


async def test_without_javascript_the_answer_follows_the_waiting_image(user_browser: Client, no_worker: None) -> None:
    response = await upload_page(user_browser, samples.photo(7102), name="plain.jpg", htmx=False)
    assert response.status_code == 202 and is_full_page(response)
    assert "The classifier is warming up" in response.text and 'id="upload-form"' in response.text
    prediction = await waiting("plain.jpg")
    # A browser cannot post the file again by itself: the image is kept, and its page reloads itself.
    refresh = f'<noscript><meta http-equiv="refresh" content="3; url=/predictions/{prediction.id}"></noscript>'
    assert refresh in response.text
    page = await user_browser.get(f"/predictions/{prediction.id}")
    assert (
        f'<noscript><meta http-equiv="refresh" content="3; url=/predictions/{prediction.id}"></noscript>' in page.text
    )
    assert "The classifier is warming up" in page.text


async def test_admins_are_told_how_to_start_a_worker(admin_browser: Client, no_worker: None) -> None:
    response = await upload_page(admin_browser, samples.photo(7103), name="admin-early.jpg")
    assert response.status_code == 202 and "The classifier is warming up" in response.text
    assert f"<code>{WORKER_COMMAND}</code>" in response.text
    prediction = await waiting("admin-early.jpg")
    page = await admin_browser.get(f"/predictions/{prediction.id}")
    assert f"<code>{WORKER_COMMAND}</code>" in page.text


async def test_the_classify_form_opens_its_answer_at_the_result(user_browser: Client) -> None:
    # Without JavaScript the answer is a whole page with the form first: on a phone the result would be
    # out of sight, so the page opens at it.
    page = await user_browser.get("/")
    assert re.search(r'<form id="upload-form"[^>]* action="/#result"', page.text)
    assert 'hx-post="/"' in page.text


@pytest.mark.parametrize("htmx", [True, False])
async def test_a_refusal_that_says_when_shows_when(
    user_browser: Client, no_worker: None, monkeypatch: pytest.MonkeyPatch, htmx: bool
) -> None:
    async def busy(*_: Any) -> None:
        raise predictions.unavailable("The service is busy (40 images ahead of yours); try again shortly", 7)

    monkeypatch.setattr(predictions, "_check_capacity", busy)
    response = await upload_page(user_browser, samples.photo(7104), name="busy.jpg", htmx=htmx)
    assert response.status_code == 503 and response.headers["Retry-After"] == "7"
    # static/js/app.js counts down from data-retry-after and sends the chosen files again.
    assert '<p class="retry" data-retry-after="7">Try again in 7 s.</p>' in response.text
    assert "The service is busy" in response.text


@pytest.mark.parametrize("admin", [False, True])
async def test_a_refusal_for_want_of_a_worker_is_explained_to_admins(
    browser: Client, settings: Settings, admin: bool, no_worker: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def no_room(*_: Any) -> None:  # the fallback refused too: the same words, a retry, and for admins the fix
        raise predictions.NoWorker(detail=predictions.NO_WORKER, headers={"Retry-After": "5"})

    monkeypatch.setattr(predictions, "_defer", no_room)
    if admin:
        assert (await log_in_page(browser, settings.admin_email, settings.admin_password)).status_code == 303
    else:
        await sign_up_page(browser)
    response = await upload_page(browser, samples.photo(7105), name="gone.jpg")
    assert response.status_code == 503 and "warming up" in response.text
    assert 'data-retry-after="5"' in response.text
    assert (f"<code>{WORKER_COMMAND}</code>" in response.text) is admin
