"""JSON API for predictions, feedback and class names."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

import msgspec
from litestar import Response, get, post
from litestar.datastructures import UploadFile
from litestar.params import FromPath, HeaderParameter, JSONBody, MultipartBody, QueryParameter
from litestar.status_codes import HTTP_200_OK, HTTP_202_ACCEPTED

from app import feedback, labels, predictions
from app.feedback import COMMENT_MAX
from app.models import Feedback, Prediction
from app.routes.params import AuthedRequest, Page, PerPage
from app.services import services


class Upload(msgspec.Struct):
    file: UploadFile


Sha256 = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]


class LookupIn(msgspec.Struct, forbid_unknown_fields=True):
    sha256: Annotated[list[Sha256], msgspec.Meta(max_length=1000)]


class FeedbackIn(msgspec.Struct, forbid_unknown_fields=True):
    is_correct: bool
    correct_label: Annotated[str, msgspec.Meta(max_length=100)] | None = None
    comment: Annotated[str, msgspec.Meta(max_length=COMMENT_MAX)] = ""


def wants_async(wait: bool, prefer: str | None) -> bool:
    return not wait or "respond-async" in (prefer or "").lower()


@post(
    "/api/predictions",
    tags=["predictions"],
    summary="Classify an image (multipart field `file`)",
    status_code=HTTP_200_OK,
    description="200 with the result; 202 with the id when `wait=false` or `Prefer: respond-async`; "
    "504 with the id when the result takes longer than the wait timeout.",
)
async def create_prediction(
    request: AuthedRequest,
    data: MultipartBody[Upload],
    wait: Annotated[bool, QueryParameter(description="Wait for the result")] = True,
    prefer: Annotated[str | None, HeaderParameter(name="Prefer")] = None,
) -> Response[dict[str, Any]]:
    svc = services(request)
    content = await data.file.read()
    prediction = await predictions.submit(svc, request.user, content, data.file.filename or "")
    if wants_async(wait, prefer) and prediction.status == "queued":
        location = f"/api/predictions/{prediction.id}"
        return Response(predictions.to_dict(prediction), status_code=HTTP_202_ACCEPTED, headers={"Location": location})
    prediction = await predictions.wait(svc, prediction, svc.settings.wait_timeout)
    return Response(predictions.to_dict(prediction))


@get("/api/predictions/{prediction_id:uuid}", tags=["predictions"], summary="One prediction")
async def read_prediction(request: AuthedRequest, prediction_id: FromPath[UUID]) -> dict[str, Any]:
    return predictions.to_dict(await predictions.get_visible(request.user, prediction_id))


@get("/api/predictions", tags=["predictions"], summary="The caller's predictions, newest first")
async def list_predictions(request: AuthedRequest, page: Page = 1, per_page: PerPage = 20) -> dict[str, Any]:
    query = Prediction.filter(user=request.user).order_by("-created_at")
    total = await query.count()
    items = await query.offset((page - 1) * per_page).limit(per_page)
    return {
        "items": [predictions.to_dict(p) for p in items],
        "page": page,
        "per_page": per_page,
        "total": total,
    }


@post(
    "/api/predictions/lookup",
    tags=["predictions"],
    summary="Your latest prediction of each image, by sha256 (to skip images already classified)",
    status_code=HTTP_200_OK,
)
async def lookup_predictions(request: AuthedRequest, data: JSONBody[LookupIn]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    rows = await Prediction.filter(user=request.user, image_sha256__in=data.sha256).order_by("created_at")
    for prediction in rows:  # oldest first: the latest of each image wins
        found[prediction.image_sha256] = predictions.to_dict(prediction)
    return {"found": found}


@post(
    "/api/predictions/{prediction_id:uuid}/feedback",
    tags=["feedback"],
    summary="Say whether a prediction was right (creates or replaces your feedback)",
    status_code=HTTP_200_OK,
)
async def give_feedback(
    request: AuthedRequest, prediction_id: FromPath[UUID], data: JSONBody[FeedbackIn]
) -> dict[str, Any]:
    prediction = await predictions.get_visible(request.user, prediction_id)
    given = await feedback.give(request.user, prediction, data.is_correct, data.correct_label, data.comment)
    return feedback.to_dict(given)


@get("/api/feedback", tags=["feedback"], summary="Your feedback (an admin's: everyone's)")
async def list_feedback(
    request: AuthedRequest,
    page: Page = 1,
    per_page: PerPage = 50,
    wrong_only: Annotated[bool, QueryParameter()] = False,
    label: Annotated[str | None, QueryParameter(max_length=100, description="Predicted label")] = None,
) -> dict[str, Any]:
    query = Feedback.all() if request.user.is_admin else Feedback.filter(user=request.user)
    query = feedback.FeedbackFilter(wrong_only, label or "").apply(query)
    total = await query.count()
    items = await query.order_by("-updated_at").offset((page - 1) * per_page).limit(per_page)
    return {"items": [feedback.to_dict(f) for f in items], "page": page, "per_page": per_page, "total": total}


@get("/api/labels", tags=["labels"], summary="Search the 1,000 ImageNet class names")
async def search_labels(
    q: Annotated[str, QueryParameter(max_length=100)] = "",
    limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 20,
) -> list[dict[str, Any]]:
    return [{"index": x.index, "wnid": x.wnid, "name": x.name} for x in labels.search(q, limit)]


routes = [
    create_prediction,
    read_prediction,
    list_predictions,
    lookup_predictions,
    give_feedback,
    list_feedback,
    search_labels,
]
