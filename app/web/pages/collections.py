"""The page of one collection: its progress, live while images wait, and its results with their thumbnails,
filtered by status and label and paginated; and their CSV. The owner and admins only (404 for anyone else).

As every page, one template pair: `pages/collection.html` includes `partials/collection.html`. Filters,
pagination and the live refresh ask for the same address with htmx and pick the part they replace out of
the partial (`hx-select`), so the one handler serves them all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlencode
from uuid import UUID

from litestar import get
from litestar.exceptions import ClientException
from litestar.params import FromPath, QueryParameter
from litestar.response import Stream, Template
from tortoise.functions import Count

from app import collections, predictions
from app.jobs.producer import workers_of
from app.models import Collection, CollectionStatus, Prediction, Status
from app.outages import DEPENDENCY_ERRORS
from app.schemas import UNTRAINED_WEIGHTS, weights_trained
from app.web.deps import AnyRequest, Page, paginate, services
from app.web.rendering import csv_attachment, render

RESULTS_PER_PAGE = 50
POLL_SECONDS = 2
STATUS_NAMES = {Status.QUEUED: "Waiting", Status.DONE: "Done", Status.FAILED: "Failed"}

StatusParam = Annotated[str, QueryParameter(max_length=10, description="queued, done or failed; empty: all")]
LabelParam = Annotated[str, QueryParameter(max_length=100, description="A predicted label; empty: all")]


@dataclass(frozen=True)
class ResultFilter:
    status: Status | None = None
    label: str = ""

    @classmethod
    def parse(cls, status: str, label: str) -> ResultFilter:
        """From the query (an empty value means any: that is what the form's "All" option sends)."""
        if status and status not in {str(s) for s in Status}:
            raise ClientException(f"Unknown status {status[:10]!r}: choose queued, done or failed")
        return cls(Status(status) if status else None, label.strip())

    @property
    def active(self) -> bool:
        return bool(self.status or self.label)

    def query_string(self, **extra: Any) -> str:
        """These filters (and `extra`) as a query string for links: other pages, the live refresh."""
        params = {"status": self.status, "label": self.label, **extra}
        return urlencode({k: v for k, v in params.items() if v})


async def label_counts(collection: Collection) -> list[tuple[str, int]]:
    """The labels found so far and how many images have each, for the label filter's suggestions."""
    rows = (
        await Prediction.filter(collection=collection, label__isnull=False)
        .annotate(n=Count("id"))
        .group_by("label")
        .order_by("label")
        .values_list("label", "n")
    )
    return [(str(label), int(n)) for label, n in rows]


async def waiting_without_worker(request: AnyRequest, queued: int) -> bool:
    """Images wait and no worker of this app's model is alive to take them: worth saying, rather than polling in
    silence."""
    if not queued:
        return False
    try:
        found = services(request)
        return not (await workers_of(found.redis, found.settings.model_id)).mine
    except DEPENDENCY_ERRORS:  # Redis down: the page still shows what the database knows
        return False


async def untrained(request: AnyRequest, collection: Collection, reading: bool) -> bool:
    """Whether the notice of an untrained model belongs on the page: some results are an untrained model's,
    or, while the archive is read (the notice is not refreshed), the results to come will be."""
    if reading and not weights_trained(services(request).settings.model_weights):
        return True
    return await Prediction.filter(collection=collection, model_weights=UNTRAINED_WEIGHTS).exists()


async def collection_context(
    request: AnyRequest, collection: Collection, filters: ResultFilter, page: int
) -> dict[str, Any]:
    progress = await collections.progress(collection)
    query = collections.items(collection, filters.status, filters.label)
    items, pager = await paginate(query, page, RESULTS_PER_PAGE, bounded=False)  # MAX_COLLECTION_FILES
    results = [predictions.page_result(p) for p in items]
    finished = progress["done"] + progress["failed"]
    reading = collection.status == CollectionStatus.READING
    return {
        "collection": collection,
        "progress": progress,
        "finished": finished,
        "percent": 100 * finished / progress["total"] if progress["total"] else 100.0,
        "running": reading or progress["queued"] > 0,
        "reading": reading,
        "read": finished + progress["queued"],
        "no_worker": await waiting_without_worker(request, progress["queued"]),
        "poll_seconds": POLL_SECONDS,
        "reload_url": f"{request.url.path}?{request.url.query}" if request.url.query else request.url.path,
        "results": results,
        "pager": pager,
        "filters": filters,
        "statuses": STATUS_NAMES,
        "labels": await label_counts(collection),
        "untrained": await untrained(request, collection, reading),
    }


@get("/collections/{collection_id:uuid}", name="collection", include_in_schema=False)
async def collection_page(
    request: AnyRequest,
    collection_id: FromPath[UUID],
    page: Page = 1,
    status: StatusParam = "",
    label: LabelParam = "",
) -> Template:
    collection = await collections.visible_collection(request.user, collection_id)
    context = await collection_context(request, collection, ResultFilter.parse(status, label), page)
    return render(request, "pages/collection.html", "partials/collection.html", context)


@get("/collections/{collection_id:uuid}/results.csv", include_in_schema=False)
async def collection_csv_page(request: AnyRequest, collection_id: FromPath[UUID]) -> Stream:
    """The API's CSV, for a signed-in browser (the API takes only the bearer token, never the cookie)."""
    return csv_attachment(*await collections.results_csv(services(request), request.user, collection_id))


routes: list[Any] = [collection_page, collection_csv_page]
