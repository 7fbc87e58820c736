"""JSON API for collections: many images in one request, their progress and a CSV of the results."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated
from uuid import UUID

import msgspec
from litestar import Response, get, post
from litestar.datastructures import UploadFile
from litestar.params import FromPath, MultipartBody, QueryParameter
from litestar.response import Stream
from litestar.status_codes import HTTP_202_ACCEPTED

from app import archives, collections
from app.models import Collection, Status
from app.schemas import CollectionOut, collection_out, prediction_out
from app.web.api.schemas import CollectionDetail, CollectionPage
from app.web.contract import errors
from app.web.deps import LIST_DESCRIPTION, AuthedRequest, Before, Page, PerPage, paginate, services
from app.web.rendering import csv_attachment
from app.web.uploads import read_parts

StatusFilter = Annotated[Status | None, QueryParameter(description="Only items with this status")]
ResultLabelFilter = Annotated[str | None, QueryParameter(max_length=100, description="Only items with this label")]


@dataclass
class CollectionForm:
    files: list[UploadFile] = field(default_factory=list)
    archive: UploadFile | None = None
    name: str = ""


async def read_uploads(form: CollectionForm) -> list[archives.Upload]:
    """The uploads of the form; 415 for an `archive` that is no zip: taken as one image, a tar archive was
    accepted (202) as a collection of one item, which then failed as "not a supported image"."""
    archive = await read_parts(form.archive, "archive")
    if archive and not archives.is_archive(archive[0]):
        raise archives.refuse(
            "`archive` must be a zip archive (tar, 7z, rar and others are not opened); send images as `files`", 415
        )
    return await read_parts(form.files, "files") + archive


@post(
    "/api/collections",
    tags=["collections"],
    summary="Classify many images: several multipart `files`, or one zip `archive`",
    status_code=HTTP_202_ACCEPTED,
    responses=errors(415, 429, 507),
)
async def create_collection(request: AuthedRequest, data: MultipartBody[CollectionForm]) -> Response[CollectionOut]:
    uploads = await read_uploads(data)
    collection = await collections.create(services(request), request.user, uploads, data.name)
    return Response(
        collection_out(collection, await collections.progress(collection)),
        status_code=HTTP_202_ACCEPTED,
        headers={"Location": f"/api/collections/{collection.id}"},
    )


@get(
    "/api/collections",
    tags=["collections"],
    summary="Your collections, newest first",
    description=LIST_DESCRIPTION,
    responses=errors(404),
)
async def list_collections(
    request: AuthedRequest, page: Page = 1, per_page: PerPage = 20, before: Before = None
) -> CollectionPage:
    query = Collection.of_person(request.user)
    items, pager = await paginate(query, page, per_page, before=before, by="created_at")
    progress = await collections.progress_of(items)  # one query for the page, not one per collection
    described = [collection_out(c, progress[str(c.id)]) for c in items]
    return CollectionPage(described, page, per_page, pager.total, pager.more, pager.next_before)


@get("/api/collections/{collection_id:uuid}", tags=["collections"], summary="Progress and results")
async def read_collection(
    request: AuthedRequest,
    collection_id: FromPath[UUID],
    page: Page = 1,
    per_page: PerPage = 100,
    status: StatusFilter = None,
    label: ResultLabelFilter = None,
) -> CollectionDetail:
    collection = await collections.visible_collection(request.user, collection_id)
    query = collections.items(collection, status, label)
    results, pager = await paginate(query, page, per_page, bounded=False)  # MAX_COLLECTION_FILES
    described = collection_out(collection, await collections.progress(collection))
    return CollectionDetail(
        **msgspec.structs.asdict(described),
        results=[prediction_out(p, show_cached=request.user.is_admin) for p in results],
        page=page,
        per_page=per_page,
        matching=pager.total,
    )


@get(
    "/api/collections/{collection_id:uuid}/results.csv",
    tags=["collections"],
    summary="One row per image: file name, sha256, label, WordNet id, score, top 5, status, error",
    media_type="text/csv",
)
async def collection_csv(request: AuthedRequest, collection_id: FromPath[UUID]) -> Stream:
    return csv_attachment(*await collections.results_csv(services(request), request.user, collection_id))


routes = [create_collection, list_collections, read_collection, collection_csv]
