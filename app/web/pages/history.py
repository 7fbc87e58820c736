"""History: the signed-in user's single images, newest first, with their newest collections above them."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from litestar import get
from litestar.response import Template
from tortoise.queryset import QuerySet

from app import collections, feedback, predictions
from app.models import Collection, Feedback, Prediction, User
from app.web.deps import AnyRequest, Before, Page, paginate
from app.web.rendering import render

HISTORY_PER_PAGE = 12
HISTORY_COLLECTIONS = 4  # the newest, above the single images; the rest on /history/collections
COLLECTIONS_PER_PAGE = 20


async def collections_context(user: User, page: int, per_page: int, before: UUID | None = None) -> dict[str, Any]:
    items, pager = await paginate(Collection.of_person(user), page, per_page, before=before, by="created_at")
    progress = await collections.progress_of(items)
    rows = [{"collection": c, "progress": progress[str(c.id)]} for c in items]
    return {"collections": rows, "collections_pager": pager, "collections_before": before}


def single_images(user: User) -> QuerySet[Prediction]:
    """A person's images sent alone, newest first, ties by the id. Images of a collection are listed on its own
    page: here they would bury the single ones. By the index on (user_id, collection_id, created_at, id): by
    the one on (user_id, created_at, id), each page read past all the person's collections' images. Ordered by
    collection_id too (null in all of them) so that PostgreSQL sees the index's order: `IS NULL` does not fix
    a column as `=` does, and it sorted all the person's single images for each page."""
    singles = Prediction.filter(user_id=user.id, collection_id__isnull=True)
    return singles.order_by("-collection_id", "-created_at", "-id")


@get("/history", name="history", include_in_schema=False)
async def history(request: AnyRequest, page: Page = 1, before: Before = None) -> Template:
    """`before`: the images after that one (the Older link where the window of pages ends)."""
    query = single_images(request.user)
    items, pager = await paginate(query, page, HISTORY_PER_PAGE, before=before, by="created_at")
    given = await Feedback.filter(user=request.user, prediction_id__in=[p.id for p in items])
    by_prediction = {str(f.prediction_id): feedback.feedback_dict(f) for f in given}  # type: ignore[attr-defined]
    rows = [
        {"result": (result := predictions.page_result(p)), "feedback": by_prediction.get(result["id"])} for p in items
    ]
    context = {
        "rows": rows,
        "pager": pager,
        "before": before,
        **await collections_context(request.user, 1, HISTORY_COLLECTIONS),
    }
    return render(request, "pages/history.html", "partials/history.html", context)


@get("/history/collections", name="history_collections", include_in_schema=False)
async def history_collections(request: AnyRequest, page: Page = 1, before: Before = None) -> Template:
    context = await collections_context(request.user, page, COLLECTIONS_PER_PAGE, before)
    return render(request, "pages/history_collections.html", "partials/history_collections.html", context)


routes: list[Any] = [history, history_collections]
