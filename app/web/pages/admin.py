"""Admin pages: users, all feedback with filters and a CSV export for retraining, agreement per label,
and the live system status. Administrators only (a 403 page for anyone else)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from litestar import Router, get
from litestar.params import QueryParameter
from litestar.response import Stream, Template
from tortoise.expressions import Q
from tortoise.functions import Count, Sum
from tortoise.queryset import QuerySet

from app import quotas
from app.exports import CSV_PAGE, csv_bool, csv_text, spreadsheet_safe
from app.feedback import FeedbackFilter, newest_first
from app.jobs.producer import dead_jobs, queue_depth, workers_of
from app.models import Feedback, FeedbackByLabel, Prediction, Status, User
from app.outages import DEPENDENCY_ERRORS
from app.schemas import weights_trained
from app.services import Services
from app.web.deps import AnyRequest, Page, admin_guard, paginate, services
from app.web.rendering import render

USERS_PER_PAGE = 20
FEEDBACK_PER_PAGE = 25
AGREEMENT_ROWS = 50
FEEDBACK_CSV_COLUMNS = (
    "image_sha256",
    "predicted_label",
    "predicted_wnid",
    "correct_label",
    "correct_wnid",
    "is_correct",
    "comment",
    "user_email",
    "updated_at",
    "model_trained",  # false: feedback on an untrained model's answers (MODEL_WEIGHTS=random)
)
RECENT = timedelta(minutes=1)

WrongOnly = Annotated[bool, QueryParameter(description="Only feedback saying the prediction was wrong")]
LabelFilter = Annotated[str, QueryParameter(max_length=100, description="Predicted label")]


# ---- the sections ------------------------------------------------------------------------------------


async def counts_by_user(model: type[Prediction] | type[Feedback], user_ids: list[int]) -> dict[int, int]:
    rows = (
        await model.filter(user_id__in=user_ids).annotate(n=Count("id")).group_by("user_id").values_list("user_id", "n")
    )
    return {int(user_id): int(n) for user_id, n in rows}


async def usage_by_user(user_ids: list[int]) -> dict[int, tuple[int, int]]:
    """(predictions, bytes of originals stored) per user, in one grouped query."""
    rows = (
        await Prediction.filter(user_id__in=user_ids)
        .annotate(n=Count("id"), stored=Sum("image_bytes", _filter=Q(image_path__not="")))
        .group_by("user_id")
        .values_list("user_id", "n", "stored")
    )
    return {int(user_id): (int(n), int(stored or 0)) for user_id, n, stored in rows}


def accounts() -> QuerySet[User]:
    """Every account, the newest first: by the index on created_at (without it, all were sorted for each page)."""
    return User.all().order_by("-created_at")


async def users_context(page: int) -> dict[str, Any]:
    users, pager = await paginate(accounts(), page, USERS_PER_PAGE, bounded=False)  # an admin's: not bounded
    ids = [u.id for u in users]
    # Two grouped queries, not one joining both tables: that join multiplies rows per user.
    usage, given = await usage_by_user(ids), await counts_by_user(Feedback, ids)
    rows = []
    for u in users:
        made, stored = usage.get(u.id, (0, 0))
        rows.append({"user": u, "predictions": made, "stored": stored, "feedback": given.get(u.id, 0)})
    return {"users": rows, "users_pager": pager}


async def feedback_context(filters: FeedbackFilter, page: int) -> dict[str, Any]:
    query = newest_first(None, filters).select_related("prediction", "user")
    items, pager = await paginate(query, page, FEEDBACK_PER_PAGE, bounded=False)
    return {
        "feedback_items": items,
        "feedback_pager": pager,
        "filters": filters,
        "filter_labels": await labels_with_feedback().values_list("label", flat=True),
    }


def labels_with_feedback() -> QuerySet[FeedbackByLabel]:
    """The labels predicted of any feedback, by name: from the counts per label, not every feedback row joined
    to its prediction (254 ms a view on PostgreSQL with 200,000 feedback rows, and growing)."""
    return FeedbackByLabel.exclude(label="").order_by("label")


def agreement_rows() -> QuerySet[FeedbackByLabel]:
    """Feedback and agreement per predicted label, as counted (a row per label: the 1,000 classes at most)."""
    return FeedbackByLabel.filter(total__gt=0)


async def agreement_context() -> dict[str, Any]:
    rows = await agreement_rows().values_list("label", "total", "agreed")
    stats = [
        {"label": label or None, "total": total, "agreed": agreed, "rate": agreed / total}
        for label, total, agreed in rows
    ]
    # Worst first: the labels the model most often gets wrong are the ones to look at.
    stats.sort(key=lambda s: (s["rate"], -s["total"], s["label"] or ""))
    return {"agreement": stats[:AGREEMENT_ROWS], "agreement_labels": len(stats)}


def disk_context(svc: Services) -> dict[str, Any]:
    """How full UPLOAD_DIR is, from the figure the process keeps (no walk, no query)."""
    used, mark = svc.disk.used, quotas.high_water_mark(svc.settings)
    return {
        "disk_used": used,
        "disk_max": svc.settings.max_stored_bytes,
        "disk_mark": mark,
        "disk_full": used >= mark,
        "disk_measured": svc.disk.measured,
    }


def recently_finished() -> QuerySet[Prediction]:
    """The predictions finished (done or failed: only they have a finished_at) in the last RECENT, by the index
    on finished_at: the status panel asks every two seconds. Not by status too, which SQLite chose instead,
    reading every finished prediction there ever was."""
    return Prediction.filter(finished_at__gte=datetime.now(UTC) - RECENT)


async def throughput_context() -> dict[str, Any]:
    """Throughput has one definition: predictions finished (done or failed, by a worker or from the cache)
    in the last minute, per second. The workers' own figure (`Heartbeat.images_per_second`) is another
    thing, their speed while busy: images per second of inference over their recent batches, idle time
    left out, cache hits not counted, and kept as it was while a worker waits for work. Summed, it read
    as throughput and disagreed with the count of finished predictions; the page shows it per worker only,
    under that name."""
    finished = recently_finished()
    count = await finished.count()
    seconds = RECENT.total_seconds()
    return {
        "finished_recently": count,
        "cached_recently": await finished.filter(cached=True).count(),
        "recent_seconds": int(seconds),
        "throughput": count / seconds,
    }


async def status_context(request: AnyRequest) -> dict[str, Any]:
    """The workers of this app's model first and counted; those of another model listed after, marked: this
    app's jobs do not go to them."""
    redis, model_id = services(request).redis, services(request).settings.model_id
    context: dict[str, Any] = {
        **disk_context(services(request)),
        **(await throughput_context()),
        "queued": await Prediction.filter(status=Status.QUEUED).count(),
        "redis_ok": True,
        "now": time.time(),
        "model_id": model_id,
    }
    try:
        workers = await workers_of(redis, model_id)
        context.update(
            workers=workers.mine + workers.others,
            workers_mine=len(workers.mine),
            depth=await queue_depth(redis),
            dead=await dead_jobs(redis),
        )
    except DEPENDENCY_ERRORS:  # the panel says Redis is down rather than replacing itself with an error
        context.update(redis_ok=False, workers=[], workers_mine=0, depth=None, dead=None)
    return context


# ---- the pages ---------------------------------------------------------------------------------------


def section(request: AnyRequest, name: str, context: dict[str, Any]) -> Template:
    """One admin section: its partial for an HTMX request, else a page holding just that section."""
    partial = f"partials/admin_{name}.html"
    return render(request, "pages/admin_section.html", partial, {"section": partial, "name": name, **context})


@get("/", name="admin", include_in_schema=False)
async def admin_page(request: AnyRequest) -> Template:
    context = {
        **(await users_context(1)),
        **(await feedback_context(FeedbackFilter(), 1)),
        **(await agreement_context()),
        **(await status_context(request)),
        "untrained": not weights_trained(services(request).settings.model_weights),
    }
    return render(request, "pages/admin.html", "partials/admin.html", context)


@get("/users", include_in_schema=False)
async def admin_users(request: AnyRequest, page: Page = 1) -> Template:
    return section(request, "users", await users_context(page))


@get("/feedback", include_in_schema=False)
async def admin_feedback(
    request: AnyRequest, page: Page = 1, wrong_only: WrongOnly = False, label: LabelFilter = ""
) -> Template:
    return section(request, "feedback", await feedback_context(FeedbackFilter(wrong_only, label.strip()), page))


@get("/agreement", include_in_schema=False)
async def admin_agreement(request: AnyRequest) -> Template:
    return section(request, "agreement", await agreement_context())


@get("/status", include_in_schema=False)
async def admin_status(request: AnyRequest) -> Template:
    return section(request, "status", await status_context(request))


# The CSV's columns' sources, then the keyset's: read as tuples, for model objects of each row, its prediction
# and its person cost the web process 1.6 s of CPU per 20,000 rows on PostgreSQL (as tuples 0.25 s).
FEEDBACK_CSV_FIELDS = (
    *("prediction__image_sha256", "prediction__label", "prediction__wnid", "correct_label", "correct_wnid"),
    *("is_correct", "comment", "user__email", "updated_at", "prediction__model_weights", "id"),
)


def csv_row(item: tuple[Any, ...]) -> list[str]:
    sha256, label, wnid, correct_label, correct_wnid, is_correct, comment, email, updated_at, weights, _ = item
    if is_correct:  # a confirmed prediction's correct class is the predicted one: every row is a training label
        correct_label, correct_wnid = label, wnid
    return [
        sha256,
        label or "",
        wnid or "",
        correct_label or "",
        correct_wnid or "",
        "true" if is_correct else "false",
        spreadsheet_safe(comment),
        spreadsheet_safe(email),
        updated_at.isoformat(),
        csv_bool(weights_trained(weights)),
    ]


async def feedback_pages(filters: FeedbackFilter) -> AsyncIterator[list[list[str]]]:
    """The export's rows, CSV_PAGE at a time (keyset paging on id)."""
    last_id, query = 0, filters.apply(Feedback.all()).order_by("id")
    while page := await query.filter(id__gt=last_id).limit(CSV_PAGE).values_list(*FEEDBACK_CSV_FIELDS):
        yield [csv_row(item) for item in page]
        last_id = page[-1][-1]


@get("/feedback.csv", include_in_schema=False)
async def admin_feedback_csv(request: AnyRequest, wrong_only: WrongOnly = False, label: LabelFilter = "") -> Stream:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    pages = feedback_pages(FeedbackFilter(wrong_only, label.strip()))
    return Stream(
        csv_text(FEEDBACK_CSV_COLUMNS, pages, services(request).exports, request.user.id),
        media_type="text/csv",  # Litestar adds the charset
        headers={"Content-Disposition": f'attachment; filename="feedback-{stamp}.csv"', "Cache-Control": "no-store"},
    )


routes: list[Any] = [
    Router(
        path="/admin",
        guards=[admin_guard],
        route_handlers=[admin_page, admin_users, admin_feedback, admin_agreement, admin_status, admin_feedback_csv],
    )
]
