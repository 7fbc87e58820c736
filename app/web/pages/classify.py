"""The classify page, one prediction's page, its image and its feedback form.

One image is classified in place; several, a folder or a zip archive become a collection (its own page).
Errors are shown in the page, next to what caused them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Annotated, Any
from uuid import UUID

import msgspec
from litestar import Response, get, post
from litestar.enums import RequestEncodingType
from litestar.exceptions import ClientException, HTTPException, ServiceUnavailableException
from litestar.params import Body, FromPath, QueryParameter
from litestar.response import Redirect, Template
from litestar.status_codes import (
    HTTP_200_OK,
    HTTP_202_ACCEPTED,
    HTTP_303_SEE_OTHER,
    HTTP_400_BAD_REQUEST,
    HTTP_503_SERVICE_UNAVAILABLE,
)

from app import collections, feedback, images, labels, predictions, stages, thumbnails
from app.archives import Upload
from app.models import Collection, Feedback, Prediction, Status, User, deferred
from app.web.deps import AnyRequest, services
from app.web.pages.accounts import FormBody, form_post
from app.web.pages.collections import waiting_without_worker
from app.web.rendering import go, render, wants_partial
from app.web.uploads import UploadForm, collection_name, is_collection, read_parts

log = logging.getLogger(__name__)
LABEL_OPTIONS = 20


@dataclass
class FeedbackView:
    """What the feedback form shows: the stored feedback, the values in the form, and any problems."""

    given: dict[str, Any] | None
    values: dict[str, str]
    errors: dict[str, str] = field(default_factory=dict)
    saved: bool = False
    suggestions: list[labels.Label] = field(default_factory=list)


def feedback_view(
    result: dict[str, Any],
    given: Feedback | None,
    values: dict[str, str] | None = None,
    errors: dict[str, str] | None = None,
    saved: bool = False,
) -> FeedbackView:
    stored = feedback.feedback_dict(given) if given else None
    if values is None:
        values = {"verdict": "", "correct_label": "", "comment": ""}
        if stored:
            values = {
                "verdict": "correct" if stored["is_correct"] else "wrong",
                "correct_label": stored["correct_label"] or "",
                "comment": stored["comment"],
            }
    typed = values.get("correct_label", "").strip()
    # Before anything is typed, the likeliest corrections are the model's other guesses.
    suggestions = (
        labels.search(typed, LABEL_OPTIONS)
        if typed
        else [x for entry in result["top5"][1:] if (x := labels.find(entry["label"]))]
    )
    return FeedbackView(stored, values, errors or {}, saved, suggestions)


async def result_context(
    user: User,
    prediction: Prediction | None,
    error: str | None = None,
    feedback_values: dict[str, str] | None = None,
    feedback_errors: dict[str, str] | None = None,
    saved: bool = False,
    warming: bool = False,
) -> dict[str, Any]:
    """`warming`: the prediction waits for a worker to come up (the page says so, and admins how to start one)."""
    if prediction is None:
        return {"result": None, "error": error, "feedback": None}
    result = predictions.page_result(prediction)
    given = await Feedback.get_or_none(prediction=prediction, user=user)
    view = feedback_view(result, given, feedback_values, feedback_errors, saved)
    return {"result": result, "error": error, "feedback": view, "warming": warming}


@get("/", name="classify", include_in_schema=False)
async def classify_page(request: AnyRequest) -> Template:
    context = await result_context(request.user, None)
    return render(request, "pages/classify.html", "partials/classify.html", context)


async def classify_upload(request: AnyRequest, upload: Upload | None) -> tuple[Prediction | None, str | None]:
    """Submit and wait; the prediction (queued still, after a timeout) and what went wrong, if anything."""
    svc = services(request)
    if upload is None:
        raise ClientException("Choose an image to classify first (or several, a folder or a zip archive)")
    # No worker alive yet (the first seconds after a start): the image waits in the database and the page
    # asks for it until a worker has classified it, with htmx or by reloading itself.
    prediction = await predictions.submit(svc, request.user, upload.data, upload.name, defer_without_worker=True)
    if deferred(prediction):
        return prediction, None
    try:
        return await predictions.wait(svc, prediction, svc.settings.wait_timeout), None
    except predictions.ResultTimeout:
        # Not lost: the result partial keeps asking for it until the worker is done.
        message = f"No result within {svc.settings.wait_timeout:g} s: it will appear here when it is ready."
        return prediction, message


async def start_collection(request: AnyRequest, chosen: list[Upload]) -> Collection:
    return await collections.create(services(request), request.user, chosen, collection_name(chosen))


def upload_refused(request: AnyRequest, exc: HTTPException, many: bool) -> Template:
    """A refused upload, explained where the result would be. A 503 says when to try again (and the page's
    script does, by itself)."""
    headers = {k: v for k, v in (exc.headers or {}).items() if k == "Retry-After"}
    context = {
        "result": None,
        "error": exc.detail,
        "error_title": "Could not classify these files" if many else "Could not classify this image",
        "feedback": None,
        "retry_after": headers.get("Retry-After") if exc.status_code == HTTP_503_SERVICE_UNAVAILABLE else None,
        "no_worker": isinstance(exc, predictions.NoWorker),
    }
    return render(
        request,
        "pages/classify.html",
        "partials/result.html",
        context,
        status_code=exc.status_code,
        headers=headers,
    )


@post("/", include_in_schema=False, status_code=HTTP_200_OK)
async def classify_submit(
    request: AnyRequest, data: Annotated[UploadForm, Body(media_type=RequestEncodingType.MULTI_PART)]
) -> Response[Any]:
    chosen: list[Upload] = []
    try:
        chosen = [*await read_parts(data.file, "file"), *await read_parts(data.files, "files")]
        stages.close("parsing")
        if is_collection(chosen):
            stages.forget()  # a collection, not one upload: not this histogram's business
            return go(request, f"/collections/{(await start_collection(request, chosen)).id}")
        prediction, error = await classify_upload(request, chosen[0] if chosen else None)
    except HTTPException as exc:  # rejected files (400/413/415), busy or no worker (503 with Retry-After)
        return upload_refused(request, exc, is_collection(chosen))
    stages.close("other")  # from here on: rendering
    warming = prediction is not None and deferred(prediction)
    status = HTTP_202_ACCEPTED if warming else predictions.ResultTimeout.status_code if error else HTTP_200_OK
    context = await result_context(request.user, prediction, error, warming=warming)
    return render(request, "pages/classify.html", "partials/result.html", context, status_code=status)


@get("/predictions/{prediction_id:uuid}", name="prediction", include_in_schema=False)
async def prediction_page(request: AnyRequest, prediction_id: FromPath[UUID]) -> Template:
    prediction = await predictions.visible_prediction(request.user, prediction_id)
    warming = await waiting_without_worker(request, int(prediction.status == Status.QUEUED))
    context = await result_context(request.user, prediction, warming=warming)
    return render(request, "pages/prediction.html", "partials/result.html", context)


@get("/predictions/{prediction_id:uuid}/image", include_in_schema=False)
async def prediction_image(request: AnyRequest, prediction_id: FromPath[UUID]) -> Response[bytes]:
    """A preview of the upload, for its owner (and admins) only: 404 for anyone else."""
    prediction = await predictions.visible_prediction(request.user, prediction_id)
    if not prediction.image_path:  # refused at upload, or pruned since (app/admin.py)
        raise HTTPException(status_code=404, detail="No image is kept for this prediction")
    try:  # rendered in a decode process (app/sandbox.py), like every decode of uploaded bytes
        decoder = services(request).decoder
        data = await decoder.thumbnail(prediction.image_sha256, prediction.image_path, owner=request.user.id)
    except FileNotFoundError:
        raise HTTPException(status_code=404, detail="The image is no longer stored") from None
    except OSError as exc:  # stored, but the disk will not give it back just now
        log.error("could not read an original: %s", exc)
        raise ServiceUnavailableException(
            detail="The image cannot be read just now; try again later", headers={"Retry-After": "30"}
        ) from None
    except images.ImageRejected as exc:  # stored, but the decode processes refuse it now (lower limits)
        raise HTTPException(status_code=404, detail=f"No preview can be made of this image: {exc.detail}") from None
    # Private: a shared cache must never hand one person's photo to another.
    return Response(data, media_type=thumbnails.MEDIA_TYPE, headers={"Cache-Control": "private, max-age=86400"})


class FeedbackForm(msgspec.Struct):
    verdict: str = ""  # "correct" or "wrong"
    correct_label: str = ""
    comment: str = ""


def feedback_problems(data: FeedbackForm) -> dict[str, str]:
    if data.verdict not in {"correct", "wrong"}:
        return {"verdict": "Say whether the prediction was right"}
    try:
        feedback.resolve_label(data.verdict == "correct", data.correct_label)
    except ClientException as exc:
        return {"correct_label": exc.detail}
    return {}


# A form's bound whatever its encoding (as sign-in's, app/web/pages/accounts.py): sent as multipart, it took the
# app's 10 MB, and the page echoed it back.
@form_post("/predictions/{prediction_id:uuid}/feedback")
async def feedback_submit(
    request: AnyRequest, prediction_id: FromPath[UUID], data: Annotated[FeedbackForm, FormBody]
) -> Response[Any]:
    prediction = await predictions.visible_prediction(request.user, prediction_id)
    values = {"verdict": data.verdict, "correct_label": data.correct_label.strip(), "comment": data.comment}
    errors, status = feedback_problems(data), HTTP_400_BAD_REQUEST
    if not errors:
        try:
            is_correct = data.verdict == "correct"
            await feedback.give(request.user, prediction, is_correct, data.correct_label, data.comment)
        except feedback.NotFinished as exc:
            errors, status = {"form": exc.detail}, exc.status_code
        except ClientException as exc:  # the label passed above, so this is about the comment
            errors = {"comment": exc.detail}
    if not errors and not wants_partial(request):
        return Redirect(f"/predictions/{prediction.id}#feedback", status_code=HTTP_303_SEE_OTHER)
    context = await result_context(
        request.user,
        prediction,
        feedback_values=values if errors else None,
        feedback_errors=errors,
        saved=not errors,
    )
    return render(
        request,
        "pages/prediction.html",
        "partials/feedback.html",
        context,
        status_code=status if errors else HTTP_200_OK,
    )


@get("/labels/options", include_in_schema=False)
async def label_options(correct_label: Annotated[str, QueryParameter(max_length=100)] = "") -> Template:
    """Class names matching what is typed, as <option>s for the feedback form's datalist."""
    return Template(
        template_name="partials/label_options.html",
        context={"options": labels.search(correct_label, LABEL_OPTIONS)},
    )


# The classify form takes many images at once: app/web/app.py registers these two under the collections'
# larger body limit (both methods of "/" together: Litestar takes one registration per path).
upload_routes: list[Any] = [classify_page, classify_submit]
routes: list[Any] = [prediction_page, prediction_image, feedback_submit, label_options]
