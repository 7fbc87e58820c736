"""How many collections a web process reads at once: each reading holds its archive open (a file, and a
zip's directory in memory), so only a bounded number are open, fairly by person, the others waiting their
turn with their archives shut."""

from __future__ import annotations

import asyncio
import contextlib
import os
import zipfile
from collections import Counter
from pathlib import Path

import httpx
import pytest
from litestar import Litestar

from app import collections
from app import services as services_module
from app.archives import Upload
from app.models import Collection, CollectionStatus, Prediction, Status, User
from app.turns import Turns
from tests import samples
from tests.conftest import CountingClassifier
from tests.helpers import eventually, sign_up


def open_archives(archives_dir: Path) -> list[str]:
    """The stored archives this process holds open, by file name (several times if opened several times)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # closed meanwhile
            target = Path(os.readlink(f"/proc/self/fd/{fd}"))
            if target.parent == archives_dir and not target.name.startswith("."):
                found.append(target.name)
    return found


async def test_the_archives_open_at_once_are_bounded_in_all_and_by_person(
    client: httpx.AsyncClient, app: Litestar, worker: CountingClassifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: every collection being read opened its archive at once and then waited for its
    turn of steps with it open, so a process held as many open archives (and zip directories, 6.7 MB for
    10,000 entries) as there were collections started. Now a reading opens its archive only once it is
    among the `open_readings` (OPEN_READINGS, lowered to 3 here), at most READING_STEPS of them one
    person's, and closes it as it ends."""
    services = app.state.services
    monkeypatch.setattr(services, "open_readings", Turns(3, per_owner=services_module.READING_STEPS))
    archives_dir = services.settings.upload_dir / collections.ARCHIVES_DIR
    people = []
    for _ in range(3):
        me = await client.get("/api/users/me", headers=await sign_up(client))
        people.append(await User.get(id=me.json()["id"]))
    owners = [people[0]] * 3 + [people[1]] * 2 + [people[2]]  # 6 collections: 3, 2 and 1 person's
    started: list[Collection] = []
    seen_total, seen_each = 0, 0

    async def watch() -> None:
        nonlocal seen_total, seen_each
        while True:
            names = open_archives(archives_dir)
            whose = Counter(str(c.user_id) for c in started if any(n.startswith(str(c.id)) for n in names))  # type: ignore[attr-defined]
            seen_total, seen_each = max(seen_total, len(names)), max([seen_each, *whose.values()])
            await asyncio.sleep(0.005)

    watching = asyncio.create_task(watch())
    try:
        async with contextlib.AsyncExitStack() as held:  # the decode processes busy: no reading gets far
            for slot in range(services.settings.decode_processes):
                await held.enter_async_context(services.decoder.turns.slot(("someone else", slot)))
            for n, person in enumerate(owners):
                images = {f"{i}.png": samples.photo(9100 + 10 * n + i, (32, 24), "PNG") for i in range(6)}
                archive = samples.zipped(images, zipfile.ZIP_STORED)
                started.append(await collections._start(services, person, [Upload("c.zip", archive)], "", (6, 1 << 20)))

            async def opened() -> bool:  # the feeder may be waiting out a pause an earlier test's failures set
                return seen_total > 0

            await eventually(opened, what="a reading to open its archive")
            await asyncio.sleep(2)  # long enough for every reading to open what it will before its turn
            assert seen_total <= 3, f"{seen_total} archives open at once"
        ids = [c.id for c in started]

        async def all_done() -> bool:
            return await Collection.filter(id__in=ids, status=CollectionStatus.DONE).count() == len(ids)

        await eventually(all_done, seconds=90, what="every collection classified")
    finally:
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching
    assert seen_total <= 3 and seen_each <= services_module.READING_STEPS, (seen_total, seen_each)
    assert await Prediction.filter(collection_id__in=ids, status=Status.DONE).count() == 36
    assert open_archives(archives_dir) == [] and not services.open_readings.held
