"""Server-rendered pages (HTMX + Jinja2): accounts, classify, history, one prediction and its feedback.

Each page is one template pair: `pages/x.html` (a full document) includes `partials/x.html`, whose root
element carries the id that `hx-target` names. A handler answers the partial to an HTMX request and the
page otherwise (`render`). Errors from the shared modules are shown in the page, next to what caused them.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from datetime import datetime
from http import HTTPStatus
from pathlib import PurePosixPath
from typing import Annotated, Any
from urllib.parse import urlencode, urlsplit
from uuid import UUID

import msgspec
from litestar import Request, Response, get, post
from litestar.datastructures import Cookie
from litestar.enums import RequestEncodingType
from litestar.exceptions import ClientException, HTTPException
from litestar.params import Body, FromPath, QueryParameter
from litestar.plugins.htmx import ClientRedirect
from litestar.response import Redirect, Template
from litestar.status_codes import (
    HTTP_200_OK,
    HTTP_303_SEE_OTHER,
    HTTP_400_BAD_REQUEST,
    HTTP_401_UNAUTHORIZED,
    HTTP_500_INTERNAL_SERVER_ERROR,
)
from PIL import UnidentifiedImageError

from app import accounts, bulk, feedback, labels, predictions, thumbnails
from app.errors import error_body
from app.models import Collection, Feedback, Prediction, User
from app.routes.auth import issue_token, jwt_auth, revoke
from app.routes.collections import read_parts
from app.routes.params import Page
from app.services import client_address, services

AnyRequest = Request[Any, Any, Any]
FormBody = Body(media_type=RequestEncodingType.URL_ENCODED)
HISTORY_PER_PAGE = 12
HISTORY_COLLECTIONS = 4  # the newest, above the single images; the rest on /history/collections
COLLECTIONS_PER_PAGE = 20
LABEL_OPTIONS = 20
NAME_MAX = 100
# Where a sign-in may send people afterwards: never back to the account forms themselves.
ACCOUNT_PATHS = ("/login", "/register", "/logout")

ERROR_TITLES = {
    400: "That did not work",
    403: "Not allowed",
    404: "Page not found",
    405: "Not allowed here",
    409: "Conflict",
    413: "Too large",
    415: "Unsupported file",
    429: "Too many attempts",
    500: "Something went wrong",
    503: "Temporarily unavailable",
    504: "Taking too long",
}
# Instead of a bare reason phrase ("Not Found"), a sentence; and never a server error's internals.
PLAIN_DETAILS = {
    403: "You are not allowed to see this page.",
    404: "There is nothing at this address: the link may be wrong, or the page has gone.",
    405: "This address does not take that kind of request.",
    413: "The upload is larger than this service accepts.",
    500: "Something broke on our side. It has been logged; please try again in a moment.",
}


# ---- rendering -------------------------------------------------------------------------------------


def current_user(request: AnyRequest) -> User | None:
    """The signed-in user, or None where auth did not run (public pages, unknown paths)."""
    user = request.scope.get("user")
    return user if isinstance(user, User) else None


def wants_partial(request: AnyRequest) -> bool:
    """An HTMX swap wants only the partial; a boosted link or a history restore needs the whole page."""
    htmx = getattr(request, "htmx", None)
    return bool(htmx) and not htmx.boosted and not htmx.history_restore_request  # type: ignore[union-attr]


def render(
    request: AnyRequest,
    page: str,
    partial: str,
    context: dict[str, Any],
    *,
    status_code: int = HTTP_200_OK,
    headers: dict[str, str] | None = None,
) -> Template:
    settings = request.app.state.settings
    user = current_user(request)
    return Template(
        template_name=partial if wants_partial(request) else page,
        context={
            "user": user,
            "has_session": user is None and jwt_auth(request).key in request.cookies,
            "htmx_url": settings.htmx_url,
            "htmx_integrity": settings.htmx_integrity,
            "path": request.url.path,
            "max_upload_bytes": settings.max_upload_bytes,
            "max_collection_bytes": settings.max_collection_bytes,
            "max_collection_files": settings.max_collection_files,
            **context,
        },
        status_code=status_code,
        # The same URL answers a page or a partial: caches (and htmx's history) must tell them apart.
        headers={"Vary": "HX-Request", **(headers or {})},
    )


def format_when(value: datetime | str | None) -> str:
    if value is None:
        return ""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.strftime("%d %b %Y, %H:%M UTC")


def format_percent(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value * 100:.{digits}f}%"


def configure_templates(engine: Any) -> None:
    """Filters the templates share (called by the template config in app/asgi.py)."""
    engine.engine.filters.update(when=format_when, percent=format_percent)


@dataclass(frozen=True)
class Pager:
    number: int
    per_page: int
    total: int

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.per_page))

    @property
    def offset(self) -> int:
        return (self.number - 1) * self.per_page


NextPath = Annotated[str, QueryParameter(name="next", max_length=2000, description="Where to go after signing in")]


# ---- signing in and out ----------------------------------------------------------------------------


def safe_next(target: str | None) -> str:
    """A local path to continue to after signing in; anything else (another host, a scheme) goes home."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    if any(ord(c) < 32 for c in target):
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or parts.path.startswith(ACCOUNT_PATHS):
        return "/"
    return target


def login_url(request: AnyRequest) -> str:
    """/login, coming back afterwards to the page being viewed."""
    if request.method == "GET" and not wants_partial(request):
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    else:  # a form post or a swap: come back to the page it was made from
        htmx = getattr(request, "htmx", None)
        here = (htmx.current_url_abs_path if htmx else None) or "/"
    target = safe_next(here)
    return "/login" if target == "/" else f"/login?{urlencode({'next': target})}"


def go(request: AnyRequest, target: str) -> Response[Any]:
    """Navigate: HTMX follows HX-Redirect (a 3xx would be swapped in), a browser a 303."""
    if wants_partial(request):
        return ClientRedirect(target)
    return Redirect(target, status_code=HTTP_303_SEE_OTHER)


def signed_in(request: AnyRequest, user: User, target: str) -> Response[Any]:
    auth = jwt_auth(request)
    response = go(request, target)
    response.set_cookie(
        Cookie(
            key=auth.key,
            value=issue_token(request, user),
            path=auth.path,
            domain=auth.domain,
            max_age=int(auth.default_token_expiration.total_seconds()),
            httponly=True,  # out of reach of scripts
            samesite=auth.samesite,  # lax: not sent on cross-site posts
            secure=auth.secure,  # True in production
        )
    )
    return response


def signed_out(request: AnyRequest, target: str) -> Response[Any]:
    auth = jwt_auth(request)
    response = go(request, target)
    response.delete_cookie(auth.key, path=auth.path, domain=auth.domain)
    return response


class LoginForm(msgspec.Struct):
    email: str = ""
    password: str = ""
    next: str = ""


class RegisterForm(msgspec.Struct):
    email: str = ""
    name: str = ""
    password: str = ""
    next: str = ""


def account_form(
    request: AnyRequest,
    kind: str,
    values: dict[str, str],
    errors: dict[str, str],
    status_code: int = HTTP_200_OK,
    headers: dict[str, str] | None = None,
) -> Template:
    return render(
        request,
        f"pages/{kind}.html",
        f"partials/{kind}.html",
        {"values": values, "errors": errors},
        status_code=status_code,
        headers=headers,
    )


@get("/login", name="login", include_in_schema=False)
async def login_page(request: AnyRequest, next_path: NextPath = "/") -> Template:
    return account_form(request, "login", {"email": "", "next": safe_next(next_path)}, {})


@post("/login", include_in_schema=False, status_code=HTTP_200_OK)
async def login_submit(request: AnyRequest, data: Annotated[LoginForm, FormBody]) -> Response[Any]:
    values = {"email": data.email.strip(), "next": safe_next(data.next)}
    errors: dict[str, str] = {}
    if problem := accounts.email_problem(accounts.normalize_email(data.email)):
        errors["email"] = problem
    if not data.password:
        errors["password"] = "Enter your password"
    elif len(data.password) > accounts.PASSWORD_MAX:  # no account has one this long: skip the hashing
        errors["password"] = accounts.BAD_CREDENTIALS
    if errors:
        return account_form(request, "login", values, errors, HTTP_400_BAD_REQUEST)
    try:
        throttle = services(request).throttle
        user = await accounts.authenticate(data.email, data.password, client_address(request), throttle)
    except HTTPException as exc:  # 401 wrong email or password, 429 too many attempts
        where = "password" if exc.status_code == HTTP_401_UNAUTHORIZED else "form"
        return account_form(request, "login", values, {where: exc.detail}, exc.status_code, exc.headers)
    return signed_in(request, user, values["next"])


@get("/register", name="register", include_in_schema=False)
async def register_page(request: AnyRequest, next_path: NextPath = "/") -> Template:
    return account_form(request, "register", {"email": "", "name": "", "next": safe_next(next_path)}, {})


def register_problems(data: RegisterForm) -> dict[str, str]:
    problems = {
        "email": accounts.email_problem(accounts.normalize_email(data.email)),
        "name": f"The name must be at most {NAME_MAX} characters" if len(data.name.strip()) > NAME_MAX else None,
        "password": accounts.password_problem(data.password),
    }
    return {name: problem for name, problem in problems.items() if problem}


@post("/register", include_in_schema=False, status_code=HTTP_200_OK)
async def register_submit(request: AnyRequest, data: Annotated[RegisterForm, FormBody]) -> Response[Any]:
    values = {"email": data.email.strip(), "name": data.name.strip(), "next": safe_next(data.next)}
    if errors := register_problems(data):
        return account_form(request, "register", values, errors, HTTP_400_BAD_REQUEST)
    try:
        user = await accounts.register(data.email, data.password, data.name)
    except accounts.EmailTaken as exc:
        return account_form(request, "register", values, {"email": exc.detail}, exc.status_code)
    return signed_in(request, user, values["next"])


@post("/logout", include_in_schema=False, status_code=HTTP_200_OK)
async def logout(request: AnyRequest) -> Response[Any]:
    await revoke(request, request.auth)
    return signed_out(request, "/login")


# ---- classify, one prediction, feedback ---------------------------------------------------------------


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
    stored = feedback.to_dict(given) if given else None
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
) -> dict[str, Any]:
    if prediction is None:
        return {"result": None, "error": error, "feedback": None}
    result = predictions.to_dict(prediction)
    given = await Feedback.get_or_none(prediction=prediction, user=user)
    view = feedback_view(result, given, feedback_values, feedback_errors, saved)
    return {"result": result, "error": error, "feedback": view}


@get("/", name="classify", include_in_schema=False)
async def classify_page(request: AnyRequest) -> Template:
    context = await result_context(request.user, None)
    return render(request, "pages/classify.html", "partials/classify.html", context)


@dataclass
class UploadForm:
    """The classify form: `files` holds one image, several, a folder's or a zip; `file` is its older name.

    Untyped on purpose: a browser sends an empty file input as a text part (""), which a list of files would
    refuse, failing the whole form. `read_parts` sorts the parts out and explains any problem."""

    file: Any = None
    files: Any = None


async def classify_upload(request: AnyRequest, upload: bulk.Upload | None) -> tuple[Prediction | None, str | None]:
    """Submit and wait; the prediction (queued still, after a timeout) and what went wrong, if anything."""
    svc = services(request)
    if upload is None:
        raise ClientException("Choose an image to classify first (or several, a folder or a zip archive)")
    prediction = await predictions.submit(svc, request.user, upload.data, upload.name)
    try:
        return await predictions.wait(svc, prediction, svc.settings.wait_timeout), None
    except predictions.ResultTimeout:
        # Not lost: the result partial keeps asking for it until the worker is done.
        message = f"No result within {svc.settings.wait_timeout:g} s: it will appear here when it is ready."
        return prediction, message


def is_collection(chosen: list[bulk.Upload]) -> bool:
    """One image is classified in place; several, or an archive, become a collection."""
    return len(chosen) > 1 or (len(chosen) == 1 and bulk.is_archive(chosen[0]))


def collection_name(chosen: list[bulk.Upload]) -> str:
    """The name of the zip or the folder chosen, if that is what it was; else none."""
    if len(chosen) == 1:
        return PurePosixPath(chosen[0].name).stem
    folders = {PurePosixPath(u.name).parts[0] if "/" in u.name else "" for u in chosen}
    return folders.pop() if len(folders) == 1 else ""


async def start_collection(request: AnyRequest, chosen: list[bulk.Upload]) -> Collection:
    svc = services(request)
    limits = svc.settings
    uploads = await asyncio.to_thread(
        bulk.open_archives, chosen, limits.max_collection_files, limits.max_collection_bytes
    )
    if not uploads:
        raise ClientException("There is nothing to classify: the files chosen hold no images")
    return await bulk.create(svc, request.user, uploads, collection_name(chosen))


def upload_refused(request: AnyRequest, exc: HTTPException, many: bool) -> Template:
    """A refused upload, explained where the result would be."""
    context = {
        "result": None,
        "error": exc.detail,
        "error_title": "Could not classify these files" if many else "Could not classify this image",
        "feedback": None,
    }
    headers = {k: v for k, v in (exc.headers or {}).items() if k == "Retry-After"}
    return render(
        request,
        "pages/classify.html",
        "partials/result.html",
        context,
        status_code=exc.status_code,
        headers=headers,
    )


@post("/", include_in_schema=False, status_code=HTTP_200_OK)
async def classify(
    request: AnyRequest, data: Annotated[UploadForm, Body(media_type=RequestEncodingType.MULTI_PART)]
) -> Response[Any]:
    chosen: list[bulk.Upload] = []
    try:
        chosen = [*await read_parts(data.file, "file"), *await read_parts(data.files, "files")]
        if is_collection(chosen):
            return go(request, f"/collections/{(await start_collection(request, chosen)).id}")
        prediction, error = await classify_upload(request, chosen[0] if chosen else None)
    except HTTPException as exc:  # rejected files (400/413/415), busy or no worker (503 with Retry-After)
        return upload_refused(request, exc, is_collection(chosen))
    status = predictions.ResultTimeout.status_code if error else HTTP_200_OK
    context = await result_context(request.user, prediction, error)
    return render(request, "pages/classify.html", "partials/result.html", context, status_code=status)


@get("/predictions/{prediction_id:uuid}", name="prediction", include_in_schema=False)
async def prediction_page(request: AnyRequest, prediction_id: FromPath[UUID]) -> Template:
    prediction = await predictions.get_visible(request.user, prediction_id)
    context = await result_context(request.user, prediction)
    return render(request, "pages/prediction.html", "partials/result.html", context)


@get("/predictions/{prediction_id:uuid}/image", include_in_schema=False)
async def prediction_image(request: AnyRequest, prediction_id: FromPath[UUID]) -> Response[bytes]:
    """A preview of the upload, for its owner (and admins) only: 404 for anyone else."""
    prediction = await predictions.get_visible(request.user, prediction_id)
    upload_dir = services(request).settings.upload_dir
    if not prediction.image_path:  # refused at upload: nothing was stored
        raise HTTPException(status_code=404, detail="No image was stored for this prediction")
    try:
        data = await asyncio.to_thread(thumbnails.thumbnail, upload_dir, prediction.image_sha256, prediction.image_path)
    except (OSError, UnidentifiedImageError):
        raise HTTPException(status_code=404, detail="The image is no longer stored") from None
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


@post("/predictions/{prediction_id:uuid}/feedback", include_in_schema=False, status_code=HTTP_200_OK)
async def feedback_submit(
    request: AnyRequest, prediction_id: FromPath[UUID], data: Annotated[FeedbackForm, FormBody]
) -> Response[Any]:
    prediction = await predictions.get_visible(request.user, prediction_id)
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


# ---- history ---------------------------------------------------------------------------------------


async def collections_context(user: User, page: int, per_page: int) -> dict[str, Any]:
    query = Collection.filter(user=user)
    pager = Pager(page, per_page, await query.count())
    items = await query.order_by("-created_at").offset(pager.offset).limit(pager.per_page)
    progress = await bulk.progress_of(items)
    rows = [{"collection": c, "progress": progress[str(c.id)]} for c in items]
    return {"collections": rows, "collections_pager": pager}


@get("/history", name="history", include_in_schema=False)
async def history(request: AnyRequest, page: Page = 1) -> Template:
    # Images of a collection are listed on its own page: here they would bury the single ones.
    query = Prediction.filter(user=request.user, collection_id__isnull=True)
    pager = Pager(page, HISTORY_PER_PAGE, await query.count())
    items = await query.order_by("-created_at").offset(pager.offset).limit(pager.per_page)
    given = await Feedback.filter(user=request.user, prediction_id__in=[p.id for p in items])
    by_prediction = {str(f.prediction_id): feedback.to_dict(f) for f in given}  # type: ignore[attr-defined]
    rows = [{"result": (result := predictions.to_dict(p)), "feedback": by_prediction.get(result["id"])} for p in items]
    context = {"rows": rows, "pager": pager, **await collections_context(request.user, 1, HISTORY_COLLECTIONS)}
    return render(request, "pages/history.html", "partials/history.html", context)


@get("/history/collections", name="history_collections", include_in_schema=False)
async def history_collections(request: AnyRequest, page: Page = 1) -> Template:
    context = await collections_context(request.user, page, COLLECTIONS_PER_PAGE)
    return render(request, "pages/history_collections.html", "partials/history_collections.html", context)


# ---- errors ----------------------------------------------------------------------------------------


def plain_detail(status: int, detail: str) -> str:
    try:
        phrase = HTTPStatus(status).phrase.casefold()
    except ValueError:
        phrase = ""
    if status == HTTP_500_INTERNAL_SERVER_ERROR or detail.casefold() in {phrase, "internal server error"}:
        return PLAIN_DETAILS.get(status, detail)
    return detail


def error_page(request: AnyRequest, exc: Exception) -> Response[Any]:
    """Errors for people: sign in first for 401; a message for an HTMX swap; an error page otherwise."""
    status, detail, headers, _ = error_body(exc)
    if status == HTTP_401_UNAUTHORIZED:
        return signed_out(request, login_url(request))  # and drop a stale or revoked cookie
    context = {
        "status_code": status,
        "title": ERROR_TITLES.get(status, "Error"),
        "detail": plain_detail(status, detail),
    }
    if wants_partial(request):
        # Shown in the page's message area, whatever the request meant to swap.
        headers = {**headers, "HX-Retarget": "#messages", "HX-Reswap": "innerHTML"}
    return render(request, "errors/error.html", "errors/message.html", context, status_code=status, headers=headers)


# The classify form takes many images at once: app/asgi.py registers these two under the collections'
# larger body limit (both methods of "/" together: Litestar takes one registration per path).
upload_routes: list[Any] = [classify_page, classify]
routes: list[Any] = [
    login_page,
    login_submit,
    register_page,
    register_submit,
    logout,
    prediction_page,
    prediction_image,
    feedback_submit,
    label_options,
    history,
    history_collections,
]
