"""The collection pages: many files, a folder or a zip through the classify form (with and without htmx), the
collection's page with its live progress, filters, pages and CSV, who may see it, and the history's list."""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import html
import io
import re
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit
from uuid import UUID, uuid4

import httpx
import pytest
from litestar import Litestar
from redis.asyncio import Redis

from app import keys
from app.exports import RESULT_CSV_COLUMNS
from app.feeder import feed
from app.jobs.protocol import bulk_streams
from app.models import Collection, CollectionStatus, Prediction, Status, User
from app.settings import Settings
from tests import broken_zips, samples
from tests.conftest import CountingClassifier
from tests.helpers import eventually
from tests.page_helpers import (
    HX,
    Client,
    assert_full,
    assert_partial,
    csrf,
    is_full_page,
    make_prediction,
    stored_original,
    user_of,
)

Files = Sequence[tuple[str, tuple[str | None, bytes, str]]]  # a part without a file name is a text field
ZIP_TYPE = "application/zip"
EMPTY_INPUT = ("files", ("", b"", "application/octet-stream"))


# ---- helpers -----------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
async def _no_bulk_jobs_left(redis: Redis) -> AsyncIterator[None]:
    """Collections made here without a worker leave jobs queued: a later test's worker must not take them."""
    yield
    streams = await bulk_streams(redis)
    await redis.delete(keys.BULK_USERS, *streams)


@pytest.fixture
def small_limits(app: Litestar, settings: Settings) -> Iterator[None]:
    """At most 3 images in a collection, so that the limits are quick to reach."""
    services = app.state.services
    services.settings = dataclasses.replace(settings, max_collection_files=3)
    yield
    services.settings = settings


def image_files(count: int, seed: int, folder: str = "") -> Files:
    return [("files", (f"{folder}img-{i}.jpg", samples.photo(seed + i), "image/jpeg")) for i in range(count)]


async def post_files(browser: Client, files: Files, htmx: bool = False) -> httpx.Response:
    """The classify form as a browser posts it: with JavaScript off (the token in the form) or by htmx; and
    as browsers do, with the input left empty (the folder's, here) sent as a part without name or bytes."""
    token = await csrf(browser)
    parts = [*files, EMPTY_INPUT]
    if htmx:
        return await browser.post("/", files=parts, headers={**HX, "X-CSRFToken": token})
    return await browser.post("/", files=parts, data={"_csrf_token": token})


async def created(response: httpx.Response, htmx: bool = False) -> Collection:
    """The collection a classify form post made, checking that the browser was sent to its page; once
    its files are read (in the background), so that its items are there."""
    if htmx:
        assert response.status_code == 200, response.text
        target = response.headers["HX-Redirect"]
    else:
        assert response.status_code == 303, response.text
        target = response.headers["location"]
    match = re.fullmatch(r"/collections/([0-9a-f-]{36})", target)
    assert match, target

    async def read() -> bool:
        return (await Collection.get(id=UUID(match.group(1)))).status != CollectionStatus.READING

    await eventually(read, seconds=30, what="the files read")
    return await Collection.get(id=UUID(match.group(1)))


async def make_collection(user: User, name: str = "", originals: Path | None = None, **counts: int) -> Collection:
    """A collection straight in the database: `done=`, `failed=`, `queued=` items, and labelled ones given as
    `<label>=n` with underscores for spaces (done, e.g. `goldfish=2`); with `originals` (UPLOAD_DIR), the done
    ones keep an original there, else none. Out of the app's feeder's way: made
    classifying, it was called done (its counts stored) by a round that came before its items were all made;
    and its queued items, waiting for the feeder, were fed and failed (their stand-in originals missing). It is
    done while its items are made, and classifying after only if some are queued, as on a stream already."""
    plain = {status: counts.pop(status, 0) for status in ("done", "failed", "queued")}
    labelled = {label.replace("_", " "): n for label, n in counts.items()}
    total = sum(plain.values()) + sum(labelled.values())
    collection = await Collection.create(user=user, name=name, total=total, status=CollectionStatus.DONE)
    index = 0

    async def item(label: str = "tabby cat", **fields: Any) -> None:
        nonlocal index
        index += 1
        made = await make_prediction(user, label, collection=collection, file_name=f"file-{index:03}.jpg", **fields)
        if made.status != Status.DONE:  # no label yet, or ever
            await Prediction.filter(id=made.id).update(label=None, wnid=None, score=None, top5=None)

    def stored() -> dict[str, Any]:
        return stored_original(originals) if originals else {}

    for label, n in labelled.items():
        for _ in range(n):
            await item(label, **stored())
    for _ in range(plain["done"]):
        await item(**stored())
    for _ in range(plain["failed"]):
        await item(status=Status.FAILED, image_path="", error="Not a supported image: send JPEG")
    for _ in range(plain["queued"]):
        await item(status=Status.QUEUED, enqueued_at=datetime.now(UTC))
    if plain["queued"]:
        await Collection.filter(id=collection.id).update(status=CollectionStatus.CLASSIFYING)
    return collection


def row_files(page: httpx.Response) -> list[str]:
    """The file names in a results table, in order."""
    return re.findall(r'<td class="file"><a href="/predictions/[0-9a-f-]{36}">([^<]+)</a>', page.text)


def is_polling(page: httpx.Response) -> bool:
    return re.search(r'id="collection-results"[^>]*hx-trigger="every \d+s"', page.text) is not None


# ---- signed out, strangers, admins ---------------------------------------------------------------------


@pytest.mark.parametrize("path", [f"/collections/{uuid4()}", f"/collections/{uuid4()}/results.csv"])
async def test_signed_out_collection_pages_go_to_login_and_back(browser: Client, path: str) -> None:
    response = await browser.get(path)
    assert response.status_code == 303
    location = urlsplit(response.headers["location"])
    assert location.path == "/login" and parse_qs(location.query)["next"] == [path]


async def test_history_collections_signed_out(browser: Client) -> None:
    response = await browser.get("/history/collections")
    assert response.status_code == 303 and response.headers["location"].startswith("/login")


async def test_only_the_owner_and_admins_see_a_collection(
    user_browser: Client, client: Client, auth: dict[str, str], admin_auth: dict[str, str]
) -> None:
    collection = await make_collection(await user_of(user_browser), "mine", done=2)
    paths = [f"/collections/{collection.id}", f"/collections/{collection.id}/results.csv"]
    for path in paths:
        stranger = await client.get(path, headers=auth)
        assert stranger.status_code == 404 and is_full_page(stranger) and "No such collection" in stranger.text
        swapped = await client.get(path, headers=auth | HX)
        assert swapped.status_code == 404 and swapped.headers["HX-Retarget"] == "#messages"
        assert (await client.get(path, headers=admin_auth)).status_code == 200
        assert (await user_browser.get(path)).status_code == 200
    assert (await user_browser.get(f"/collections/{uuid4()}")).status_code == 404
    assert (await user_browser.get("/collections/not-a-uuid")).status_code in (400, 404)


# ---- the collection page -------------------------------------------------------------------------------


async def test_collection_page_full_and_partial(user_browser: Client, settings: Settings) -> None:
    user = await user_of(user_browser)
    collection = await make_collection(user, "trip", settings.upload_dir, tabby_cat=2, failed=1)
    full = await user_browser.get(f"/collections/{collection.id}")
    assert_full(full, "collection")
    assert "<h1>trip</h1>" in full.text and "3 files" in full.text and "Created " in full.text
    assert 'aria-current="page">History' in full.text
    assert 'role="progressbar"' in full.text and 'aria-valuenow="3"' in full.text and 'aria-valuemax="3"' in full.text
    assert "All 3 finished: 1 could not be classified" in full.text
    assert f'href="/collections/{collection.id}/results.csv" download' in full.text
    assert row_files(full) == ["file-001.jpg", "file-002.jpg", "file-003.jpg"]
    items = await Prediction.filter(collection=collection).order_by("file_name")
    for done in items[:2]:  # the owner's thumbnails and the prediction pages
        assert f'<img src="/predictions/{done.id}/image" alt=""' in full.text
        assert f'<a href="/predictions/{done.id}">{done.file_name}</a>' in full.text
    assert '<span class="thumb-missing"' in full.text  # refused at upload: never stored, no thumbnail to ask for
    assert "Not a supported image" in full.text and '<span class="badge bad">Failed</span>' in full.text
    assert full.text.count('<span class="badge good">Done</span>') == 2 and "50.0%" in full.text
    assert '<option value="tabby cat">2 images</option>' in full.text  # the label filter's suggestions
    partial = await user_browser.get(f"/collections/{collection.id}", headers=HX)
    assert_partial(partial, "collection")
    assert 'id="collection-results"' in partial.text and 'id="collection-progress"' in partial.text


async def test_an_unnamed_collection_is_called_by_its_size(user_browser: Client) -> None:
    collection = await make_collection(await user_of(user_browser), done=1)
    page = await user_browser.get(f"/collections/{collection.id}")
    assert "<h1>1 image</h1>" in page.text and "<title>1 image · " in page.text


async def test_progress_refreshes_itself_while_images_wait(
    user_browser: Client, no_worker: None, app: Litestar
) -> None:
    collection = await make_collection(await user_of(user_browser), done=1, queued=3)
    await feed(app.state.services)  # a feeder round meanwhile: it leaves the images waiting alone
    page = await user_browser.get(f"/collections/{collection.id}", params={"status": "queued"})
    assert is_polling(page)
    # The refresh asks for the same filters, and brings the progress and label suggestions along.
    assert f'hx-get="/collections/{collection.id}?status=queued" hx-trigger="every 2s"' in page.text
    assert 'hx-select-oob="#collection-progress,#collection-labels"' in page.text
    assert "25%" in page.text and "1 of 4 finished, 3 waiting" in page.text and "Live" in page.text
    # Without JavaScript, a reload of this very address (spelt out: a #fragment would stop a bare refresh).
    refresh = f'<noscript><meta http-equiv="refresh" content="3; url=/collections/{collection.id}?status=queued">'
    assert refresh in page.text
    assert "The classifier is warming up: the images wait" in page.text and "app.worker" not in page.text
    assert row_files(page) == ["file-002.jpg", "file-003.jpg", "file-004.jpg"]
    top5 = [{"label": "goldfish", "wnid": "n01443537", "score": 0.9}]
    await Prediction.filter(collection=collection, status=Status.QUEUED).update(
        status=Status.DONE, label="goldfish", score=0.9, top5=top5
    )
    done = await user_browser.get(f"/collections/{collection.id}", headers=HX)
    assert not is_polling(done)
    assert "All 4 finished" in done.text and '<span class="badge good">Finished</span>' in done.text
    assert "warming up" not in done.text
    assert "http-equiv" not in (await user_browser.get(f"/collections/{collection.id}")).text


async def test_filters_by_status_and_label(user_browser: Client) -> None:
    collection = await make_collection(await user_of(user_browser), goldfish=2, tabby_cat=1, failed=1, queued=1)
    path = f"/collections/{collection.id}"
    failed = await user_browser.get(path, params={"status": "failed"})
    assert row_files(failed) == ["file-004.jpg"] and "1 result matching" in failed.text
    assert '<option value="failed" selected>Failed (1)</option>' in failed.text
    assert "Clear filters" in failed.text
    fish = await user_browser.get(path, params={"label": "GoldFish ", "status": ""})  # case and spaces do not matter
    assert row_files(fish) == ["file-001.jpg", "file-002.jpg"] and 'value="GoldFish"' in fish.text
    both = await user_browser.get(path, params={"label": "goldfish", "status": "done"}, headers=HX)
    assert_partial(both, "collection")
    assert row_files(both) == ["file-001.jpg", "file-002.jpg"]
    none = await user_browser.get(path, params={"label": "goldfish", "status": "failed"})
    assert row_files(none) == [] and "No results match these filters" in none.text
    everything = await user_browser.get(path, params={"status": "", "label": ""})
    assert len(row_files(everything)) == 5 and "Clear filters" not in everything.text
    # The form works without JavaScript (a GET to the page) and swaps only the results with htmx.
    assert f'<form class="filters collection-filters" method="get" action="{path}"' in everything.text
    assert 'hx-target="#collection-results" hx-select="#collection-results"' in everything.text


def error_messages(response: httpx.Response) -> list[str]:
    """The text of each error message on a page."""
    found = re.findall(r'<div class="alert alert-error" role="alert">\s*<p>(.*?)</p>', response.text, flags=re.S)
    return [html.unescape(message) for message in found]


# What is wrong, said on the page: the status filter's own message; Litestar's for a parameter it validates,
# with the parameter and why (tests/web/test_hostile_pages.py).
@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("status=lost", "Unknown status 'lost': choose queued, done or failed"),
        ("label=" + "x" * 101, "Validation failed for GET {url}: label: Expected `str` of length <= 100"),
        ("page=0", "Validation failed for GET {url}: page: Expected `int` >= 1"),
        ("page=x", "Validation failed for GET {url}: page: Expected `int`, got `str`"),
    ],
)
async def test_bad_filters_are_400_pages(user_browser: Client, query: str, message: str) -> None:
    collection = await make_collection(await user_of(user_browser), done=1)
    url = f"/collections/{collection.id}?{query}"
    response = await user_browser.get(url)
    assert response.status_code == 400 and is_full_page(response)
    assert error_messages(response) == [message.format(url=url)]


async def test_results_are_paginated_with_their_filters(user_browser: Client) -> None:
    collection = await make_collection(await user_of(user_browser), tabby_cat=52, failed=1)
    path = f"/collections/{collection.id}"
    first = await user_browser.get(path, params={"label": "tabby cat"})
    assert len(row_files(first)) == 50 and "Page 1 of 2" in first.text
    href = f"{path}?label=tabby+cat&amp;page=2"
    assert f'<a href="{href}" hx-get="{href}" hx-target="#collection-results" hx-select="#collection-results"' in (
        first.text
    )
    second = await user_browser.get(path, params={"label": "tabby cat", "page": 2}, headers=HX)
    assert row_files(second) == ["file-051.jpg", "file-052.jpg"] and "Next →" in second.text
    beyond = await user_browser.get(path, params={"page": 9})
    assert beyond.status_code == 200 and "nothing on page 9" in beyond.text


async def test_csv_download_through_the_page(user_browser: Client, admin_auth: dict[str, str], client: Client) -> None:
    collection = await make_collection(await user_of(user_browser), goldfish=1, failed=1)
    response = await user_browser.get(f"/collections/{collection.id}/results.csv")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    assert response.headers["content-disposition"] == f'attachment; filename="collection-{collection.id}.csv"'
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert list(rows[0]) == RESULT_CSV_COLUMNS
    assert [(r["file_name"], r["label"], r["status"]) for r in rows] == [
        ("file-001.jpg", "goldfish", "done"),
        ("file-002.jpg", "", "failed"),
    ]
    assert rows[1]["error"].startswith("Not a supported image")
    # The same file as the API's, which a browser cannot fetch: the API takes only the bearer token.
    assert (await user_browser.get(f"/api/collections/{collection.id}/results.csv")).status_code == 401
    api = await client.get(f"/api/collections/{collection.id}/results.csv", headers=admin_auth)
    assert api.text == response.text


# ---- many files through the classify form --------------------------------------------------------------


async def test_classify_form_without_javascript_makes_a_collection(user_browser: Client, no_worker: None) -> None:
    files = [*image_files(2, 9100), ("files", ("notes.txt", b"not an image", "text/plain"))]
    response = await post_files(user_browser, files)
    collection = await created(response)
    assert collection.total == 3 and collection.name == ""
    page = await user_browser.get(response.headers["location"])
    assert_full(page, "collection")
    assert "<h1>3 images</h1>" in page.text and is_polling(page) and 'http-equiv="refresh"' in page.text
    assert row_files(page) == ["img-0.jpg", "img-1.jpg", "notes.txt"]
    assert "Not a supported image" in page.text and page.text.count('<span class="badge">Waiting</span>') == 2
    # The classify page itself offers several files and a folder to a browser without JavaScript.
    form = (await user_browser.get("/")).text
    assert re.search(r'<input id="file" name="files" type="file" multiple', form)
    assert re.search(r'<input id="folder" name="files" type="file" webkitdirectory multiple', form)
    assert 'enctype="multipart/form-data"' in form and 'name="_csrf_token"' in form


async def test_classify_form_by_htmx_sends_the_browser_to_the_collection(user_browser: Client, no_worker: None) -> None:
    collection = await created(await post_files(user_browser, image_files(2, 9200), htmx=True), htmx=True)
    assert collection.total == 2
    assert await Prediction.filter(collection=collection, status=Status.QUEUED).count() == 2


async def test_a_zip_through_the_classify_form(user_browser: Client, no_worker: None) -> None:
    archive = samples.zipped(
        {
            "trip/a.jpg": samples.photo(9300),
            "trip/day2/b.png": samples.photo(9301, fmt="PNG"),
            "__MACOSX/trip/._a.jpg": b"resource fork",
            "trip/.DS_Store": b"junk",
        }
    )
    # A lone zip is a collection too, named after the archive.
    collection = await created(await post_files(user_browser, [("files", ("trip.zip", archive, ZIP_TYPE))]))
    assert (collection.total, collection.name) == (2, "trip")
    names = await Prediction.filter(collection=collection).order_by("file_name").values_list("file_name", flat=True)
    assert names == ["trip/a.jpg", "trip/day2/b.png"]


async def test_a_folder_through_the_classify_form(user_browser: Client, no_worker: None) -> None:
    files = [*image_files(2, 9400, folder="holiday/"), ("files", ("holiday/.DS_Store", b"junk", "text/plain"))]
    collection = await created(await post_files(user_browser, files))
    assert (collection.total, collection.name) == (2, "holiday")  # hidden files are not the user's images


@pytest.mark.parametrize(
    ("chosen", "name"),
    [
        ("Family \U0001f468\u200d\U0001f469\u200d\U0001f467/", "Family \U0001f468\U0001f469\U0001f467"),
        ("Soft\u00adhyphen/", "Softhyphen"),
        ("\ufeffnotes\u2028.zip", "notes"),
    ],
)
async def test_a_folder_or_zip_named_with_invisible_characters_is_taken(
    user_browser: Client, no_worker: None, chosen: str, name: str
) -> None:
    """Found in review: the name made from a folder's (or a zip's) kept the zero-width joiners of an emoji,
    a soft hyphen or a line separator, which a typed collection name may not have, and the whole upload was
    400 ("The collection name must not contain control or invisible characters") for a name nobody typed."""
    files: Files = [("files", (chosen, samples.zipped({"x.jpg": samples.photo(9510)}), ZIP_TYPE))]
    if not chosen.endswith(".zip"):
        files = [*image_files(1, 9511, folder=chosen), *image_files(1, 9512, folder=chosen + "day2/")]
    collection = await created(await post_files(user_browser, files))
    assert (collection.name, collection.total) == (name, len(files))


async def test_images_and_a_zip_together(user_browser: Client, no_worker: None) -> None:
    archive = samples.zipped({"x.jpg": samples.photo(9500)})
    files = [*image_files(1, 9501), ("files", ("more.zip", archive, ZIP_TYPE))]
    collection = await created(await post_files(user_browser, files, htmx=True), htmx=True)
    assert collection.total == 2


@pytest.mark.parametrize(
    ("archive", "message"),
    [
        (b"PK\x03\x04 not really a zip", "Not a readable zip archive"),
        (b"plain text called .zip", "Not a readable zip archive"),
        (samples.zipped({"../../evil.jpg": samples.photo(1)}), "unsafe paths"),
        (samples.zipped({"zeros.jpg": b"\x00" * 3_000_000}), "zip bomb"),
        (samples.zipped({}), "nothing to classify"),
        (broken_zips.from_the_future(), "Not a readable zip archive"),
    ],
    ids=["broken", "not-a-zip", "dotdot", "bomb", "empty", "zip-version-9.9"],
)
async def test_a_bad_zip_is_explained_in_the_page(
    user_browser: Client, no_worker: None, archive: bytes, message: str
) -> None:
    before = await Collection.all().count()
    for htmx in (False, True):
        response = await post_files(user_browser, [("files", ("bad.zip", archive, ZIP_TYPE))], htmx=htmx)
        assert response.status_code == 400, response.text
        assert is_full_page(response) is not htmx
        assert 'id="result"' in response.text and "Could not classify these files" in response.text
        assert message in response.text
        if not htmx:
            assert 'id="upload-form"' in response.text  # the form again, to try another file
    assert await Collection.all().count() == before


async def test_too_many_files_is_413_in_the_page(user_browser: Client, small_limits: None, no_worker: None) -> None:
    response = await post_files(user_browser, image_files(4, 9600))
    assert response.status_code == 413 and is_full_page(response)
    assert "At most 3 images in one collection" in response.text
    archive = samples.zipped({f"{i}.jpg": samples.photo(9610 + i) for i in range(4)})
    swapped = await post_files(user_browser, [("files", ("four.zip", archive, ZIP_TYPE))], htmx=True)
    assert swapped.status_code == 413 and "at most 3 are accepted" in swapped.text


async def test_many_files_may_exceed_the_single_upload_limit(
    user_browser: Client, settings: Settings, no_worker: None
) -> None:
    # Together past the 10 MB a single upload may be: the form has the collections' limit.
    chunk = b"\xff\xd8" + b"0" * (settings.max_upload_bytes // 2)
    files = [("files", (f"big-{i}.jpg", chunk, "image/jpeg")) for i in range(3)]
    collection = await created(await post_files(user_browser, files))
    assert collection.total == 3  # each one then refused on its own merits, and said so on the page
    assert await Prediction.filter(collection=collection, status=Status.FAILED).count() == 3


async def test_one_file_is_still_classified_in_place(user_browser: Client, no_worker: None) -> None:
    one = [("files", ("one.jpg", samples.photo(9700), "image/jpeg"))]
    response = await post_files(user_browser, one, htmx=True)
    # The single-image path: its answer in #result (here: no worker yet, so it waits, warming up).
    assert response.status_code == 202 and 'id="result"' in response.text and "warming up" in response.text
    assert "HX-Redirect" not in response.headers


@pytest.mark.parametrize("htmx", [False, True])
async def test_nothing_chosen_or_text_instead_of_files_is_400_in_the_page(user_browser: Client, htmx: bool) -> None:
    response = await post_files(user_browser, [EMPTY_INPUT], htmx=htmx)
    assert response.status_code == 400 and "Choose an image" in response.text
    text = await post_files(user_browser, [("files", (None, b"hello", "text/plain"))], htmx=htmx)
    assert text.status_code == 400 and "must be file parts" in text.text


async def test_the_form_needs_its_csrf_token(user_browser: Client, no_worker: None) -> None:
    user = await user_of(user_browser)
    response = await user_browser.post("/", files=image_files(2, 9800))
    assert response.status_code == 403 and "CSRF" in response.text
    assert await Collection.filter(user=user).count() == 0


# ---- with a worker -------------------------------------------------------------------------------------


async def test_a_collection_made_in_the_page_finishes_and_its_csv_matches(
    user_browser: Client, worker: CountingClassifier
) -> None:
    files = [*image_files(5, 9900), ("files", ("bad.gif", b"GIF89a", "image/gif"))]
    collection = await created(await post_files(user_browser, files, htmx=True), htmx=True)
    path = f"/collections/{collection.id}"
    deadline = time.monotonic() + 60
    while is_polling(page := await user_browser.get(path, headers=HX)):
        assert time.monotonic() < deadline, "the collection did not finish"
        await asyncio.sleep(0.2)
    assert "All 6 finished: 1 could not be classified" in page.text
    # As the page escapes them ("potter&#39;s wheel"): compared as text.
    options = re.findall(r'<option value="([^"]+)">\d+ images?</option>', page.text)
    labels_shown = [html.unescape(label) for label in options]
    rows = list(csv.DictReader(io.StringIO((await user_browser.get(f"{path}/results.csv")).text)))
    assert len(rows) == 6 and {r["label"] for r in rows if r["status"] == "done"} == set(labels_shown)
    first = labels_shown[0]
    filtered = await user_browser.get(path, params={"label": first, "status": "done"})
    expected = sorted(r["file_name"] for r in rows if r["label"] == first)
    assert row_files(filtered) == expected
    for item in await Prediction.filter(collection=collection, status=Status.DONE):
        image = await user_browser.get(f"/predictions/{item.id}/image")
        assert image.status_code == 200 and image.headers["content-type"] == "image/webp"


# ---- history -------------------------------------------------------------------------------------------


async def test_history_lists_collections_above_the_single_images(user_browser: Client, app: Litestar) -> None:
    user = await user_of(user_browser)
    single = await make_prediction(user, "tench", file_name="alone.jpg")
    running = await make_collection(user, "running", done=1, queued=1)
    finished = await make_collection(user, "finished", done=2, failed=1)
    await feed(app.state.services)  # a feeder round meanwhile: "running" stays so
    page = await user_browser.get("/history")
    assert_full(page, "history")
    assert page.text.index('id="history-collections"') < page.text.index("Single images")
    assert re.findall(r'href="/collections/([0-9a-f-]{36})"', page.text) == [str(finished.id), str(running.id)]
    assert "1 of 2 finished" in page.text and '<span class="badge">In progress</span>' in page.text
    assert "3 of 3 finished" in page.text and '<span class="badge bad">1 failed</span>' in page.text
    # The single images only: a collection's images are on its own page.
    assert re.findall(r'href="/predictions/([0-9a-f-]{36})"', page.text) == [str(single.id)]
    assert "1 prediction" in page.text and "See all" not in page.text
    assert_partial(await user_browser.get("/history", headers=HX), "history")


async def test_all_collections_have_their_own_paginated_list(user_browser: Client, monkeypatch: Any) -> None:
    from app.web.pages import history as history_pages

    user = await user_of(user_browser)
    made = [await make_collection(user, f"batch {i}", done=1) for i in range(6)]
    history = await user_browser.get("/history")
    assert "6 collections" in history.text and '<a href="/history/collections">See all</a>' in history.text
    assert history.text.count('class="history-item collection-item"') == history_pages.HISTORY_COLLECTIONS
    assert "No single images yet" in history.text
    monkeypatch.setattr(history_pages, "COLLECTIONS_PER_PAGE", 4)
    first = await user_browser.get("/history/collections")
    assert_full(first, "history-collections")
    assert "Page 1 of 2" in first.text and "See all" not in first.text
    second = await user_browser.get("/history/collections", params={"page": 2}, headers=HX)
    assert_partial(second, "history-collections")
    ids = re.findall(r'href="/collections/([0-9a-f-]{36})"', second.text)
    assert ids == [str(made[1].id), str(made[0].id)]


async def test_no_collections_yet(user_browser: Client) -> None:
    page = await user_browser.get("/history/collections")
    assert "No collections yet" in page.text
    history = await user_browser.get("/history")
    assert "Nothing here yet" in history.text and 'id="history-collections"' not in history.text


async def test_no_thumbnail_for_a_file_refused_at_upload(user_browser: Client, no_worker: None) -> None:
    from app.models import Prediction

    user = await user_of(user_browser)
    refused = await Prediction.create(
        user=user,
        image_sha256="0" * 64,
        image_path="",
        model_name="resnet50",
        model_weights="random",
        status="failed",
        error="Not a supported image",
    )
    response = await user_browser.get(f"/predictions/{refused.id}/image")
    assert response.status_code == 404
