"""JSON API for collections: many images in one request, their progress and a CSV of the results."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Annotated, Any
from uuid import UUID

from litestar import Response, get, post
from litestar.datastructures import UploadFile
from litestar.exceptions import ClientException
from litestar.params import FromPath, MultipartBody, QueryParameter
from litestar.status_codes import HTTP_202_ACCEPTED

from app import bulk, predictions
from app.models import Collection, Status, User
from app.routes.params import AuthedRequest, Page, PerPage
from app.services import services

StatusFilter = Annotated[Status | None, QueryParameter(description="Only items with this status")]
LabelFilter = Annotated[str | None, QueryParameter(max_length=100, description="Only items with this label")]


@dataclass
class CollectionForm:
    files: list[UploadFile] = field(default_factory=list)
    archive: UploadFile | None = None
    name: str = ""


async def read_parts(parts: Any, name: str) -> list[bulk.Upload]:
    """The file parts of a multipart field (one part or several) as uploads; 400 for a text part."""
    listed = parts if isinstance(parts, list) else [parts]
    # An empty file input arrives as an empty text part: nothing was chosen there.
    listed = [part for part in listed if part is not None and part != ""]
    # Multipart parsing does not check that these parts are files: a plain text part would be a str.
    if not all(isinstance(part, UploadFile) for part in listed):
        raise ClientException(f"`{name}` must be file parts")
    uploads = []
    for i, part in enumerate(listed):
        data = await part.read()
        if part.filename or data:  # some clients send an empty file input as a file part without name or bytes
            uploads.append(bulk.Upload(part.filename or f"file-{i}", data))
    return uploads


async def read_uploads(request: AuthedRequest, form: CollectionForm) -> list[bulk.Upload]:
    settings = services(request).settings
    uploads = await read_parts(form.files, "files") + await read_parts(form.archive, "archive")
    # Unzipping is CPU work: off the event loop.
    return await asyncio.to_thread(
        bulk.open_archives, uploads, settings.max_collection_files, settings.max_collection_bytes
    )


@post(
    "/api/collections",
    tags=["collections"],
    summary="Classify many images: several multipart `files`, or one zip `archive`",
    status_code=HTTP_202_ACCEPTED,
)
async def create_collection(request: AuthedRequest, data: MultipartBody[CollectionForm]) -> Response[dict[str, Any]]:
    uploads = await read_uploads(request, data)
    collection = await bulk.create(services(request), request.user, uploads, data.name)
    return Response(
        await bulk.to_dict(collection),
        status_code=HTTP_202_ACCEPTED,
        headers={"Location": f"/api/collections/{collection.id}"},
    )


@get("/api/collections", tags=["collections"], summary="Your collections, newest first")
async def list_collections(request: AuthedRequest, page: Page = 1, per_page: PerPage = 20) -> dict[str, Any]:
    query = Collection.filter(user=request.user).order_by("-created_at")
    items = await query.offset((page - 1) * per_page).limit(per_page)
    progress = await bulk.progress_of(items)  # one query for the page, not one per collection
    return {
        "items": [bulk.describe(c, progress[str(c.id)]) for c in items],
        "page": page,
        "per_page": per_page,
        "total": await query.count(),
    }


@get("/api/collections/{collection_id:uuid}", tags=["collections"], summary="Progress and results")
async def read_collection(
    request: AuthedRequest,
    collection_id: FromPath[UUID],
    page: Page = 1,
    per_page: PerPage = 100,
    status: StatusFilter = None,
    label: LabelFilter = None,
) -> dict[str, Any]:
    collection = await bulk.get_visible(request.user, collection_id)
    query = bulk.items(collection, status, label)
    results = await query.offset((page - 1) * per_page).limit(per_page)
    return {
        **await bulk.to_dict(collection),
        "results": [predictions.to_dict(p) for p in results],
        "page": page,
        "per_page": per_page,
        "matching": await query.count(),
    }


@get(
    "/api/collections/{collection_id:uuid}/results.csv",
    tags=["collections"],
    summary="One row per image: file name, sha256, label, WordNet id, score, top 5, status, error",
    media_type="text/csv",
)
async def collection_csv(request: AuthedRequest, collection_id: FromPath[UUID]) -> Response[str]:
    return await csv_download(request.user, collection_id)


async def csv_download(user: User, collection_id: UUID) -> Response[str]:
    """The results of a collection its owner (or an admin) may see, as a CSV file to save."""
    collection = await bulk.get_visible(user, collection_id)
    body = bulk.to_csv(predictions.to_dict(p) for p in await bulk.items(collection))
    return Response(
        body,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="collection-{collection.id}.csv"'},
    )


routes = [create_collection, list_collections, read_collection, collection_csv]
