"""Feedback on predictions: one per prediction and user, editable. Used by the API and the pages."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from litestar.exceptions import ClientException
from litestar.status_codes import HTTP_409_CONFLICT
from tortoise.exceptions import IntegrityError
from tortoise.queryset import QuerySet

from app import labels, schemas, text
from app.models import Feedback, Prediction, Status, User

COMMENT_MAX = 1000


@dataclass(frozen=True)
class FeedbackFilter:
    wrong_only: bool = False
    label: str = ""

    def apply(self, query: QuerySet[Feedback]) -> QuerySet[Feedback]:
        if self.wrong_only:
            query = query.filter(is_correct=False)
        if self.label:
            query = query.filter(predicted_label=self.label)
        return query

    def query_string(self, **extra: Any) -> str:
        """These filters (and `extra`) as a query string for links: the CSV, other pages."""
        params = {"wrong_only": "true" if self.wrong_only else None, "label": self.label or None, **extra}
        return urlencode({k: v for k, v in params.items() if v})


def newest_first(user: User | None, filters: FeedbackFilter) -> QuerySet[Feedback]:
    """One person's feedback, or everyone's (None: an admin's view), filtered, the newest first, ties by the id:
    by the indexes on (user_id, updated_at, id) and on (updated_at, id), which give the order (without them,
    every row was read and sorted for each page); filtered, by those with the filter's column before updated_at."""
    query = Feedback.all() if user is None else Feedback.filter(user_id=user.id)
    return filters.apply(query).order_by("-updated_at", "-id")


class NotFinished(ClientException):
    status_code = HTTP_409_CONFLICT


def resolve_label(is_correct: bool, correct_label: str | None) -> labels.Label | None:
    """The corrected class for a wrong prediction; a name or WordNet id from the 1,000 classes."""
    if is_correct or not correct_label or not correct_label.strip():
        return None
    found = labels.find(correct_label.strip())
    if found is None:
        raise ClientException(f"Unknown class {correct_label!r}: pick one of the 1,000 ImageNet classes")
    return found


async def give(
    user: User, prediction: Prediction, is_correct: bool, correct_label: str | None, comment: str
) -> Feedback:
    if prediction.status != Status.DONE:
        raise NotFinished("Feedback can be given once the prediction is done")
    if len(comment) > COMMENT_MAX:
        raise ClientException(f"The comment must be at most {COMMENT_MAX} characters")
    if problem := text.text_problem(comment, "The comment", multiline=True):
        raise ClientException(problem)
    label = resolve_label(is_correct, correct_label)
    values = {
        "is_correct": is_correct,
        "correct_label": label.name if label else None,
        "correct_wnid": label.wnid if label else None,
        "comment": comment.strip(),
    }
    return await _upsert(prediction, user, values)


async def _upsert(prediction: Prediction, user: User, values: dict[str, Any]) -> Feedback:
    """Each step its own statement: in one transaction (`update_or_create`), a commit of another connection
    between its read and its write (the worker's, after each batch) failed it at once on SQLite."""
    mine = Feedback.filter(prediction=prediction, user=user)
    if not await mine.update(**values, updated_at=datetime.now(UTC)):
        try:
            return await Feedback.create(prediction=prediction, user=user, **values)
        except IntegrityError:  # a first feedback sent at the same time made it
            await mine.update(**values, updated_at=datetime.now(UTC))
    return await mine.get()


def feedback_dict(feedback: Feedback) -> dict[str, Any]:
    """The API's JSON of a piece of feedback, as a dict (for the pages)."""
    return schemas.as_dict(schemas.feedback_out(feedback))
