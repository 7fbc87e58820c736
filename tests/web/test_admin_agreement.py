"""The admin's agreement per label and label filter read feedback counted per label (FeedbackByLabel, kept by
triggers made in migration 0014), not every feedback row joined to its prediction: the counts must stay those
of the feedback itself however it changes."""

from __future__ import annotations

import httpx
import pytest
from tortoise.expressions import Q
from tortoise.functions import Count

from app.feedback import FeedbackFilter
from app.models import Feedback, Prediction, User
from app.web.pages import admin
from tests.helpers import sign_up, unique_email
from tests.page_helpers import make_prediction

Counts = dict[str, tuple[int, int]]


async def counted_directly() -> Counts:
    """(feedback, agreed) per predicted label, aggregated from every feedback row: what the page showed before."""
    rows = (
        await Feedback.annotate(total=Count("id"), agreed=Count("id", _filter=Q(is_correct=True)))
        .group_by("prediction__label")
        .values_list("prediction__label", "total", "agreed")
    )
    return {label or "": (int(total), int(agreed)) for label, total, agreed in rows}


async def assert_shown_right(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admin, "AGREEMENT_ROWS", 10_000)  # every label, not the 50 worst
    direct = await counted_directly()
    shown = await admin.agreement_context()
    assert {s["label"] or "": (s["total"], s["agreed"]) for s in shown["agreement"]} == direct
    assert shown["agreement_labels"] == len(direct)
    listed = (await admin.feedback_context(FeedbackFilter(), 1))["filter_labels"]
    assert listed == sorted(label for label in direct if label)


async def give(client: httpx.AsyncClient, auth: dict[str, str], prediction: Prediction, right: bool) -> None:
    body = {"is_correct": right} if right else {"is_correct": False, "correct_label": "tench"}
    response = await client.post(f"/api/predictions/{prediction.id}/feedback", json=body, headers=auth)
    assert response.status_code == 200, response.text


async def test_the_counts_follow_feedback_given_changed_and_deleted(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    email = unique_email()
    ada_auth = await sign_up(client, email)
    ada = await User.get(email=email)
    bob = await User.create(email=unique_email(), password_hash="x")
    axolotl, hen, unlabelled = (
        await make_prediction(ada, "axolotl"),
        await make_prediction(ada, "hen"),
        await make_prediction(ada, "hen"),
    )
    await Prediction.filter(id=unlabelled.id).update(label=None)
    await give(client, ada_auth, axolotl, True)
    await give(client, ada_auth, hen, False)
    await give(client, ada_auth, unlabelled, True)
    await Feedback.create(prediction=hen, user=bob, is_correct=True)  # another's feedback on ada's prediction
    await assert_shown_right(monkeypatch)

    await give(client, ada_auth, axolotl, False)  # changed its mind: is_correct flips
    await give(client, ada_auth, hen, True)
    await give(client, ada_auth, hen, True)  # the same again changes nothing
    await assert_shown_right(monkeypatch)

    await Feedback.filter(prediction=axolotl, user=ada).delete()  # removed outright
    await assert_shown_right(monkeypatch)
    await hen.delete()  # a prediction deleted with its feedback (bob's too), by the database's cascade
    await assert_shown_right(monkeypatch)

    await Feedback.create(prediction=axolotl, user=bob, is_correct=True)
    await ada.delete()  # the account: its predictions, their feedback and its own feedback go by cascade
    assert not await Feedback.filter(user=bob).exists()
    await assert_shown_right(monkeypatch)
    await bob.delete()
    await assert_shown_right(monkeypatch)
