"""JSON API for predictions: classify an image, read one, list them, look them up by hash."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

import msgspec
from litestar import Response, get, post
from litestar.datastructures import UploadFile
from litestar.openapi import ResponseSpec
from litestar.params import FromPath, HeaderParameter, JSONBody, MultipartBody, QueryParameter
from litestar.status_codes import HTTP_200_OK, HTTP_202_ACCEPTED

from app import predictions, stages
from app.models import Prediction
from app.schemas import PredictionOut, prediction_out
from app.web.api.schemas import LookupOut, PredictionPage
from app.web.contract import errors
from app.web.deps import LIST_DESCRIPTION, AuthedRequest, Before, Page, PerPage, paginate, services


class PredictionForm(msgspec.Struct):
    file: UploadFile


Sha256 = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]


class LookupIn(msgspec.Struct, forbid_unknown_fields=True):
    sha256: Annotated[list[Sha256], msgspec.Meta(max_length=1000)]


def wants_async(wait: bool, prefer: str | None) -> bool:
    return not wait or "respond-async" in (prefer or "").lower()


@post(
    "/api/predictions",
    tags=["predictions"],
    summary="Classify an image (multipart field `file`)",
    status_code=HTTP_200_OK,
    description="200 with the result; 202 with the id when `wait=false` or `Prefer: respond-async`; "
    "504 with the id when the result takes longer than the wait timeout.",
    responses={
        HTTP_202_ACCEPTED: ResponseSpec(PredictionOut, description="Queued: fetch it later from `Location`"),
        **errors(415, 429, 503, 504, 507),
    },
)
async def create_prediction(
    request: AuthedRequest,
    data: MultipartBody[PredictionForm],
    wait: Annotated[bool, QueryParameter(description="Wait for the result")] = True,
    prefer: Annotated[str | None, HeaderParameter(name="Prefer")] = None,
) -> Response[PredictionOut]:
    svc = services(request)
    content = await data.file.read()
    stages.close("parsing")
    asynchronous = wants_async(wait, prefer)
    prediction = await predictions.submit(svc, request.user, content, data.file.filename or "", wait=not asynchronous)
    stages.close("other")  # from here on: rendering
    if asynchronous and prediction.status == "queued":
        location = f"/api/predictions/{prediction.id}"
        return Response(
            prediction_out(prediction, show_cached=request.user.is_admin),
            status_code=HTTP_202_ACCEPTED,
            headers={"Location": location},
        )
    prediction = await predictions.wait(svc, prediction, svc.settings.wait_timeout)
    return Response(prediction_out(prediction, show_cached=request.user.is_admin))


@get("/api/predictions/{prediction_id:uuid}", tags=["predictions"], summary="One prediction")
async def read_prediction(request: AuthedRequest, prediction_id: FromPath[UUID]) -> PredictionOut:
    return prediction_out(
        await predictions.visible_prediction(request.user, prediction_id), show_cached=request.user.is_admin
    )


@get(
    "/api/predictions",
    tags=["predictions"],
    summary="The caller's predictions, newest first",
    description=LIST_DESCRIPTION,
    responses=errors(404),
)
async def list_predictions(
    request: AuthedRequest, page: Page = 1, per_page: PerPage = 20, before: Before = None
) -> PredictionPage:
    query = Prediction.of_person(request.user)
    items, pager = await paginate(query, page, per_page, before=before, by="created_at")
    described = [prediction_out(p, show_cached=request.user.is_admin) for p in items]
    return PredictionPage(described, page, per_page, pager.total, pager.more, pager.next_before)


@post(
    "/api/predictions/lookup",
    tags=["predictions"],
    summary="Your latest prediction of each image, by sha256 (to skip images already classified)",
    status_code=HTTP_200_OK,
)
async def lookup_predictions(request: AuthedRequest, data: JSONBody[LookupIn]) -> LookupOut:
    newest = await predictions.newest_of_each(request.user, data.sha256)
    return LookupOut({p.image_sha256: prediction_out(p, show_cached=request.user.is_admin) for p in newest})


routes = [
    create_prediction,
    read_prediction,
    list_predictions,
    lookup_predictions,
]
