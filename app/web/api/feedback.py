"""JSON API for feedback on predictions, and the class names to correct them with."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

import msgspec
from litestar import get, post
from litestar.exceptions import ValidationException
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.status_codes import HTTP_200_OK

from app import feedback, labels, predictions
from app.feedback import COMMENT_MAX
from app.schemas import FeedbackOut, feedback_out
from app.web.api.schemas import FeedbackPage, LabelOut
from app.web.contract import errors
from app.web.deps import LIST_DESCRIPTION, AuthedRequest, BeforeNumber, Page, PerPage, paginate


class FeedbackIn(msgspec.Struct, forbid_unknown_fields=True):
    is_correct: bool
    correct_label: Annotated[str, msgspec.Meta(max_length=100)] | None = None
    comment: Annotated[str, msgspec.Meta(max_length=COMMENT_MAX)] = ""


@post(
    "/api/predictions/{prediction_id:uuid}/feedback",
    tags=["feedback"],
    summary="Say whether a prediction was right (creates or replaces your feedback)",
    status_code=HTTP_200_OK,
    responses=errors(409),
)
async def give_feedback(
    request: AuthedRequest, prediction_id: FromPath[UUID], data: JSONBody[FeedbackIn]
) -> FeedbackOut:
    try:  # Litestar converts bodies leniently (0 would pass for false); the schema promises a real boolean
        msgspec.convert(await request.json(), FeedbackIn, strict=True)
    except msgspec.ValidationError as exc:
        raise ValidationException(f"Invalid feedback: {exc}") from None
    prediction = await predictions.visible_prediction(request.user, prediction_id)
    given = await feedback.give(request.user, prediction, data.is_correct, data.correct_label, data.comment)
    return feedback_out(given)


@get(
    "/api/feedback",
    tags=["feedback"],
    summary="Your feedback, the last given or changed first (an admin's: everyone's)",
    description=LIST_DESCRIPTION,
    responses=errors(404),
)
async def list_feedback(
    request: AuthedRequest,
    page: Page = 1,
    per_page: PerPage = 50,
    wrong_only: Annotated[bool, QueryParameter()] = False,
    label: Annotated[str | None, QueryParameter(max_length=100, description="Predicted label")] = None,
    before: BeforeNumber = None,
) -> FeedbackPage:
    filters = feedback.FeedbackFilter(wrong_only, label or "")
    query = feedback.newest_first(None if request.user.is_admin else request.user, filters)
    bounded = not request.user.is_admin
    items, pager = await paginate(query, page, per_page, bounded, before=before, by="updated_at")
    return FeedbackPage([feedback_out(f) for f in items], page, per_page, pager.total, pager.more, pager.next_before)


@get("/api/labels", tags=["labels"], summary="Search the 1,000 ImageNet class names")
async def search_labels(
    q: Annotated[str, QueryParameter(max_length=100)] = "",
    limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 20,
) -> list[LabelOut]:
    return [LabelOut.of(x) for x in labels.search(q, limit)]


routes = [give_feedback, list_feedback, search_labels]
