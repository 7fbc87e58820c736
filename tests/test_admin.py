"""`python -m app.admin prune`: the retention policy deletes old originals and keeps the results."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import pathlib
import subprocess
import sys
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar import Litestar
from redis.asyncio import Redis

from app import admin, keys, thumbnails, usage
from app.models import Prediction, Status, User, mark_failed
from app.settings import Settings
from tests import samples
from tests.conftest import CountingClassifier
from tests.helpers import originals_of, read_elsewhere

Client = httpx.AsyncClient
OLD = timedelta(days=100)
ROOT = Path(__file__).resolve().parents[1]


async def classify(client: Client, auth: dict[str, str], data: bytes) -> dict[str, Any]:
    response = await client.post("/api/predictions", headers=auth, files={"file": ("x.png", data)})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["status"] == "done"
    return body


async def make_old(settings: Settings, *bodies: dict[str, Any], touch_files: bool = True) -> None:
    """Predictions (and their originals, unless `touch_files` is False) as if made 100 days ago."""
    await Prediction.filter(id__in=[b["id"] for b in bodies]).update(created_at=datetime.now(UTC) - OLD)
    if touch_files:
        then = time.time() - OLD.total_seconds()
        for body in bodies:
            os.utime(original(settings, body), (then, then))


async def run(command: list[str]) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(subprocess.run, command, cwd=ROOT, capture_output=True, text=True, timeout=120)


async def owner_of(body: dict[str, Any]) -> int:
    user_id: int = (await Prediction.get(id=body["id"])).user_id  # type: ignore[attr-defined]
    return user_id


async def an_old_upload(
    client: Client, auth: dict[str, str], settings: Settings, seed: int
) -> tuple[bytes, dict[str, Any], int]:
    """A photo classified once, its prediction made old: the photo, the prediction, its person's id."""
    photo = samples.photo(seed, fmt="PNG")
    first = await classify(client, auth, photo)
    await make_old(settings, first)
    return photo, first, await owner_of(first)


async def kept_by_the_newer(older: dict[str, Any], newer: dict[str, Any], user_id: int, photo: bytes) -> None:
    """The older prediction let its original go, the newer keeps it, and its person is charged it once."""
    assert (await Prediction.get(id=older["id"])).image_path == ""
    assert (await Prediction.get(id=newer["id"])).image_path != ""
    assert await usage.stored_bytes(user_id) == len(photo)


def original(settings: Settings, body: dict[str, Any]) -> Path:
    return settings.upload_dir / body["image_sha256"][:2] / f"{body['image_sha256']}.png"


@pytest.mark.parametrize(
    ("text", "age"), [("90d", timedelta(days=90)), ("12h", timedelta(hours=12)), (" 7D ", timedelta(days=7))]
)
def test_ages_in_days_or_hours(text: str, age: timedelta) -> None:
    assert admin.parse_age(text) == age
    assert admin.parse_age(admin.age_text(age)) == age


@pytest.mark.parametrize("text", ["90", "1.5d", "-1d", "d", "90m", ""])
def test_other_ages_are_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        admin.parse_age(text)


async def test_an_age_beyond_the_calendar_is_a_usage_error() -> None:
    """Found in review: `--older-than 800000d` passed parse_age (up to 6 digits), but its cutoff falls
    before year 1: the command opened the database and died with an OverflowError traceback instead of
    argparse's usage error."""
    with pytest.raises(argparse.ArgumentTypeError):
        admin.parse_age("800000d")
    assert admin.parse_age("999999h") == timedelta(hours=999_999)  # 114 years: still a date
    done = await run([sys.executable, "-m", "app.admin", "prune", "--older-than", "800000d", "--dry-run"])
    assert "Traceback" not in done.stderr, done.stderr[-400:]
    assert done.returncode == 2 and "usage:" in done.stderr and "year 1" in done.stderr


async def test_prune_deletes_old_originals_and_keeps_the_results(
    client: Client, auth: dict[str, str], worker: CountingClassifier, settings: Settings
) -> None:
    old = await classify(client, auth, samples.photo(14_001, fmt="PNG"))
    shared_old = await classify(client, auth, samples.photo(14_002, fmt="PNG"))
    shared_new = await classify(client, auth, samples.photo(14_002, fmt="PNG"))  # the same image, recent
    waited_for = await classify(client, auth, samples.photo(14_003, fmt="PNG"))
    in_flight = await classify(client, auth, samples.photo(14_004, fmt="PNG"))
    assert (await client.get(f"/predictions/{old['id']}/image", headers=auth)).status_code == 200  # a thumbnail
    thumbnail = thumbnails.thumbnail_path(settings.upload_dir, old["image_sha256"])
    assert thumbnail.exists()
    # An old prediction of the same image as `waited_for` still queued: its original must stay.
    finished = await Prediction.get(id=waited_for["id"])
    queued = await Prediction.create(
        user_id=finished.user_id,  # type: ignore[attr-defined]
        image_sha256=finished.image_sha256,
        image_path=finished.image_path,
        image_bytes=0,  # its person keeps the original already: charged to the other
        model_name=finished.model_name,
        model_weights=finished.model_weights,
        status=Status.QUEUED,
        enqueued_at=datetime.now(UTC),  # on a stream, as far as the feeder knows
    )
    await make_old(settings, old, shared_old, waited_for)
    await make_old(settings, in_flight, touch_files=False)  # its original was stored again a moment ago
    await Prediction.filter(id=queued.id).update(created_at=datetime.now(UTC) - OLD)
    user = await User.get(id=finished.user_id)  # type: ignore[attr-defined]
    stored_before = await usage.stored_bytes(user.id)
    try:
        report = await admin.prune(settings.upload_dir, timedelta(days=90))
    finally:
        await mark_failed([str(queued.id)], "test over")

    assert not original(settings, old).exists() and not thumbnail.exists()
    for kept in (shared_new, waited_for, in_flight):
        assert original(settings, kept).exists()
    assert report.predictions >= 4 and report.originals >= 1 and report.kept >= 3
    freed = len(samples.photo(14_001, fmt="PNG"))
    assert report.bytes_freed > freed  # the original and its thumbnail
    paths = {str(i): path for i, path in await Prediction.filter(user=user).values_list("id", "image_path")}
    assert [paths[p["id"]] for p in (old, shared_old, waited_for, in_flight)] == ["", "", "", ""]
    assert paths[shared_new["id"]] and paths[str(queued.id)]  # newer, and queued: not pruned
    assert await usage.stored_bytes(user.id) < stored_before

    # The results stay, through the API and the pages; the image is gone, not an error.
    again = (await client.get(f"/api/predictions/{old['id']}", headers=auth)).json()
    assert again | {"created_at": old["created_at"]} == old  # made "100 days ago" by this test
    assert (await client.get(f"/predictions/{old['id']}", headers=auth)).status_code == 200
    assert (await client.get("/history", headers=auth)).status_code == 200
    image = await client.get(f"/predictions/{old['id']}/image", headers=auth)
    assert image.status_code == 404


async def test_a_dry_run_deletes_nothing(
    client: Client, auth: dict[str, str], worker: CountingClassifier, settings: Settings
) -> None:
    old = await classify(client, auth, samples.photo(14_011, fmt="PNG"))
    await make_old(settings, old)
    report = await admin.prune(settings.upload_dir, timedelta(days=90), dry_run=True)
    assert report.originals >= 1 and report.bytes_freed >= len(samples.photo(14_011, fmt="PNG"))
    assert original(settings, old).exists()
    assert (await Prediction.get(id=old["id"])).image_path
    assert "Would prune" in report.summary("90d", dry_run=True)


async def test_a_kept_original_stays_charged_when_its_first_prediction_is_pruned(
    client: Client, auth: dict[str, str], worker: CountingClassifier, settings: Settings
) -> None:
    """Found while fixing the charge of an image sent again (now 0): the original is charged to the
    first prediction of it; pruning that one, while a newer one keeps the original, left it charged to
    none, so the person stored it for free."""
    photo = samples.photo(14_031, fmt="PNG")
    first, again = await classify(client, auth, photo), await classify(client, auth, photo)
    user_id = await owner_of(first)
    assert await usage.stored_bytes(user_id) == len(photo)
    await make_old(settings, first)
    await admin.prune(settings.upload_dir, timedelta(days=90))
    await kept_by_the_newer(first, again, user_id, photo)


async def test_an_original_sent_again_as_prune_runs_stays_charged(
    client: Client,
    auth: dict[str, str],
    worker: CountingClassifier,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found in review: an original kept because an upload stored it again during the run (not `used` when
    the batch was looked at) did not pass its charge on: the upload, charged 0 as its person kept it on the
    pruned prediction, was left keeping it for free. The upload is sent here once the batch was looked at."""
    photo, first, user_id = await an_old_upload(client, auth, settings, 14_041)
    still_used, again = admin._still_used, list[dict[str, Any]]()

    async def sent_again_meanwhile(*args: Any) -> set[str]:
        used = await still_used(*args)
        if not again:
            again.append(await classify(client, auth, photo))
        return used

    monkeypatch.setattr(admin, "_still_used", sent_again_meanwhile)
    report = await admin.prune(settings.upload_dir, timedelta(days=90))
    assert again and report.kept >= 1 and original(settings, first).exists()
    assert (await Prediction.get(id=first["id"])).image_path == ""
    assert await usage.stored_bytes(user_id) == len(photo)


async def test_an_upload_charged_0_as_prune_lets_its_charge_go_is_charged(
    client: Client,
    auth: dict[str, str],
    worker: CountingClassifier,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found in review: an upload of an original its person keeps is charged 0 (kept on an older prediction);
    a retention run between that decision and the upload's row let the older one go and found no newer one to
    pass the charge to (the row was not made yet), so the original was kept charged to nobody. The run goes
    here just after the decision."""
    photo, first, user_id = await an_old_upload(client, auth, settings, 14_051)
    charged_bytes, reports = usage.charged_bytes, list[admin.PruneReport]()

    async def pruned_meanwhile(*args: Any) -> int:
        charged = await charged_bytes(*args)
        if not reports:
            reports.append(await admin.prune(settings.upload_dir, timedelta(days=90)))
        return charged

    monkeypatch.setattr(usage, "charged_bytes", pruned_meanwhile)
    again = await classify(client, auth, photo)
    assert reports and reports[0].kept >= 1 and original(settings, first).exists()  # stored again by `again`
    await kept_by_the_newer(first, again, user_id, photo)


async def test_an_original_kept_by_one_batch_stays_charged_in_the_next(
    client: Client,
    auth: dict[str, str],
    worker: CountingClassifier,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found in review: an image whose predictions span two batches was kept by the first (stored again just
    now), but the second did not know it: its own look at what is used missed it (the upload's row came
    after), so its charged prediction let the original go without passing the charge on. Batches of one
    prediction here; the upload comes as the second batch of the image is looked at."""
    photo = samples.photo(14_061, fmt="PNG")
    first, second = await classify(client, auth, photo), await classify(client, auth, photo)
    user_id = await owner_of(first)
    await make_old(settings, first, second, touch_files=False)  # its original stored a moment ago
    monkeypatch.setattr(admin, "PRUNE_BATCH", 1)
    still_used, batches, again = admin._still_used, list[set[str]](), list[dict[str, Any]]()

    async def sent_again_meanwhile(shas: set[str], cutoff: datetime) -> set[str]:
        used = await still_used(shas, cutoff)
        batches.append(shas)
        if first["image_sha256"] in shas and sum(first["image_sha256"] in b for b in batches) == 2:
            again.append(await classify(client, auth, photo))
        return used

    monkeypatch.setattr(admin, "_still_used", sent_again_meanwhile)
    report = await admin.prune(settings.upload_dir, timedelta(days=90))
    assert again and report.kept >= 1 and original(settings, first).exists()
    paths = await Prediction.filter(id__in=[first["id"], second["id"]]).values_list("image_path", flat=True)
    assert paths == ["", ""]
    assert await usage.stored_bytes(user_id) == len(photo)


async def test_the_command(
    client: Client, auth: dict[str, str], worker: CountingClassifier, settings: Settings
) -> None:
    old = await classify(client, auth, samples.photo(14_021, fmt="PNG"))
    await make_old(settings, old)
    command = [sys.executable, "-m", "app.admin", "prune", "--older-than", "90d"]
    done = await run(command)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Pruned ") and "originals deleted" in done.stdout
    assert not original(settings, old).exists()
    assert (await Prediction.get(id=old["id"])).image_path == ""
    wrong = await run([*command[:-1], "90"])
    assert wrong.returncode == 2 and "90d or 12h" in wrong.stderr


async def test_prune_deletes_the_archives_no_collection_reads(
    app: Litestar, client: Client, auth: dict[str, str], settings: Settings, redis: Redis
) -> None:
    """Found in review: a collection's start stopped between storing its archive and making its row (a
    cancelled request, a process stopped), or a reading stopped between finishing and deleting the archive,
    left the archive under UPLOAD_DIR for good. The collection being read is another process's (its reading
    lock held): the app's own feeder, left to take it, read the stand-in archive and removed it (CI, once)."""
    from app.collections import ARCHIVES_DIR
    from app.files import PARTIAL_PREFIX, STALE_PARTIAL_S
    from app.models import Collection, CollectionStatus

    folder = settings.upload_dir / ARCHIVES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    user = await User.get(id=(await client.get("/api/users/me", headers=auth)).json()["id"])
    read = await read_elsewhere(redis, user=user, total=1, archive_path=f"{ARCHIVES_DIR}/being-read.zip")
    # Older than a start in progress (IN_FLIGHT) and younger than a write the disk walk removes as cut off
    # (STALE_PARTIAL_S): at an hour old, a walk of the app's own removed the partial before the check.
    then = time.time() - (admin.IN_FLIGHT.total_seconds() + STALE_PARTIAL_S) / 2
    paths = {name: folder / name for name in ("left.zip", "being-read.zip", "just-stored.zip", f"{PARTIAL_PREFIX}x")}
    for name, path in paths.items():
        path.write_bytes(b"PK" + name.encode())
        if name != "just-stored.zip":  # its start is still under way: its row is still to come
            os.utime(path, (then, then))
    try:
        await app.state.services.feeder._take_over_reading()  # a feeder round meanwhile: it leaves it alone
        await app.state.services.disk.measure(settings.upload_dir)  # and a walk of the disk: the partial stays
        dry = await admin.prune(settings.upload_dir, timedelta(days=90), dry_run=True)
        assert dry.archives >= 1 and paths["left.zip"].exists()
        report = await admin.prune(settings.upload_dir, timedelta(days=90))
        assert report.archives >= 1 and report.bytes_freed >= len(b"PKleft.zip")
        assert [name for name, path in paths.items() if path.exists()] == [
            "being-read.zip",
            "just-stored.zip",
            f"{PARTIAL_PREFIX}x",
        ]
    finally:
        await Collection.filter(id=read.id).update(status=CollectionStatus.DONE, archive_path="")
        await redis.delete(keys.reading_lock(str(read.id)))
        for path in paths.values():
            path.unlink(missing_ok=True)


async def test_prune_deletes_the_originals_no_prediction_names(
    app: Litestar, client: Client, auth: dict[str, str], no_worker: None, settings: Settings
) -> None:
    """Found in review: two uploads of one image refused at once (no worker alive) each left the original to
    the other, which stored it again meanwhile (5 pairs in 10 sent at once), and no retention run removed an
    original no row names. The first upload is held here between storing it and its refusal."""
    services, data = app.state.services, samples.photo(640)
    held, let_go, capacity = asyncio.Event(), asyncio.Event(), services.backlog.capacity

    async def held_once(*args: Any) -> Any:
        if not held.is_set():
            held.set()
            await let_go.wait()
        return await capacity(*args)

    services.backlog.capacity = held_once
    try:
        first = asyncio.create_task(client.post("/api/predictions", headers=auth, files={"file": ("a.jpg", data)}))
        await held.wait()
        second = await client.post("/api/predictions", headers=auth, files={"file": ("a.jpg", data)})
        let_go.set()
        assert ((await first).status_code, second.status_code) == (503, 503)
    finally:
        services.backlog.capacity = capacity
    [name] = originals_of(settings, data)
    original = settings.upload_dir / name[:2] / name
    await admin.prune(settings.upload_dir, OLD)
    assert original.exists()  # just stored: an upload's still under way, maybe
    then = time.time() - 3600
    os.utime(original, (then, then))
    dry = await admin.prune(settings.upload_dir, OLD, dry_run=True)
    assert original.exists()
    report = await admin.prune(settings.upload_dir, OLD)
    assert not original.exists()
    assert dry.unnamed >= 1 and report.unnamed >= 1 and report.bytes_freed >= len(data)


async def old_predictions(user: User, count: int, copies: int = 1) -> None:
    """`count` images older than OLD, each predicted `copies` times, whose originals are gone already. Their
    hashes are their own: f"{i:064x}" is also other tests' ("0" * 64 in tests/web/test_predictions.py, a newer
    row that kept it in use, so run after them the memory test counted one more kept)."""
    then = datetime.now(UTC) - OLD - timedelta(days=1)
    rows = [
        Prediction(
            user=user,
            image_sha256=f"ad31{i:060x}",
            image_path=f"ad/ad31{i:060x}.jpg",
            image_bytes=1 if copy == 0 else 0,  # charged to one of its person's predictions
            status=Status.DONE,
            model_name="resnet50",
            model_weights="random",
            created_at=then,
        )
        for i in range(count)
        for copy in range(copies)
    ]
    await Prediction.bulk_create(rows, batch_size=1000)
    await Prediction.filter(id__in=[row.id for row in rows]).update(created_at=then)


async def test_prune_holds_no_more_as_it_meets_more_images(
    settings: Settings, client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: a run kept the hash of every image it had dealt with, to skip an image met again in a
    later batch: a retention run over ten million images held over a gigabyte. Its batches now go image by
    image, so an image met again is the one dealt with last. (Its other figures: the tests above.)"""
    user = await User.create(email=f"prune-{time.time_ns()}@example.com", password_hash="x")
    monkeypatch.setattr(admin, "PRUNE_BATCH", 50)
    held = []
    # Old originals that earlier tests left, still used by a newer prediction, are kept at every run.
    left_kept = (await admin.prune(settings.upload_dir, OLD)).kept
    for count in (200, 2000):
        await old_predictions(user, count, copies=2)
        tracemalloc.start()
        report = await admin.prune(settings.upload_dir, OLD)
        gc.collect()
        # Less what pathlib interns (Python's table of interned strings keeps its size once grown).
        snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, pathlib.__file__)])
        held.append(sum(stat.size for stat in snapshot.statistics("filename")))
        tracemalloc.stop()
        assert (report.predictions, report.kept, report.originals) == (2 * count, left_kept, 0)  # none were left
    assert held[1] < held[0] + 100_000, held
