"""A full Redis (at its maxmemory, noeviction, as a queue must be) as people meet it through the HTTP app: a
second app of the module's own, on the session's database, whose Redis is the run's private one (`private_redis`
in tests/conftest.py, of the version the run targets), which it may fill (the session's Redis may be shared and must
never be), with a worker on it. What must be refused is a 503 with Retry-After that costs nothing; reads, sign-ins,
the checks and what the database already knows answer; what was accepted meanwhile finishes once there is room."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterable
from typing import Any

import httpx
import pytest
from litestar import Litestar
from redis.asyncio import Redis

from app import keys
from app.jobs.protocol import bulk_streams, connect
from app.models import Prediction, Status, User
from app.settings import Settings
from app.web.app import create_app
from tests import samples
from tests.conftest import reset_queue, running_worker, serve
from tests.helpers import (
    eventually,
    from_address,
    hold_feed_lock,
    originals_of,
    share_the_database,
    sign_up,
    unique_email,
)
from tests.jobs.conftest import full
from tests.page_helpers import PASSWORD, log_in_page, post_form, sign_up_page, upload_page
from tests.test_quotas import upload

# The module's app lets a person send this many images a day: refusals that counted would use it up.
IMAGES_A_DAY = 4
# Long enough for the module (well under a minute); it lapses by itself if the run dies holding it.
SESSION_FEED_LOCK_S = 300
DRAIN_S = 30
# The maxmemory below what Redis holds when filled at its level: more than its use ebbs and flows by (clients'
# buffers), less than the workers free as they take the jobs on its streams (2 x IMAGES_A_DAY, 150 kB each), with
# room left to send one more (which takes Redis about twice its size for a moment).
SHORT = 400 * 1024


@dataclasses.dataclass
class Own:
    """The module's app (over `http`), its Redis, and the people it made."""

    app: Litestar
    http: httpx.AsyncClient
    redis: Redis
    settings: Settings
    classifier: Any
    people: list[str]

    def email(self) -> str:
        email = unique_email()
        self.people.append(email)
        return email

    async def person(self) -> dict[str, str]:
        """A new person, signed up while there is room (a sign-up's throttle needs memory: 503 when full)."""
        return await sign_up(self.http, self.email())

    def worker(self) -> Any:
        return running_worker(self.redis, self.classifier, self.settings)


@pytest.fixture(scope="module")
async def own(
    private_redis: str, client: httpx.AsyncClient, redis: Redis, settings: Settings, classifier: Any
) -> AsyncIterator[Own]:
    own_settings = dataclasses.replace(settings, redis_url=private_redis, quota_images_per_day=IMAGES_A_DAY)
    own_redis = connect(own_settings.redis_url)
    await own_redis.flushdb()
    # The session app's feeder held off: it shares the database, and would otherwise put this module's waiting
    # uploads on the session's Redis, where no worker reads them. Its requeue waits REQUEUE_AFTER (tests/conftest.py).
    await hold_feed_lock(redis, SESSION_FEED_LOCK_S)
    people: list[str] = []
    try:
        await reset_queue(own_redis)  # earlier tests' waiting work is not for this module's worker
        with pytest.MonkeyPatch.context() as patch:
            share_the_database(patch)
            app = create_app(own_settings)
            async with serve(app) as http:
                yield Own(app, http, own_redis, own_settings, classifier, people)
    finally:
        # Nothing of this module's left waiting for the session app's feeder (no worker reads the session's Redis).
        mine = await User.filter(email__in=people).values_list("id", flat=True)
        await Prediction.filter(user_id__in=mine, status=Status.QUEUED).update(
            status=Status.FAILED, error="left over by test_full_redis"
        )
        await redis.delete(keys.FEED_LOCK)
        await own_redis.aclose()


def refused_for_room(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) > 0
    assert "full" in response.json()["detail"], response.text


async def sent_later(own: Own, auth: dict[str, str], seeds: Iterable[int]) -> list[str]:
    """The ids of async uploads of these sample photos, each accepted (202)."""
    ids = []
    for seed in seeds:
        response = await upload(own.http, auth, samples.photo(seed), wait="false")
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    return ids


async def all_done(http: httpx.AsyncClient, auth: dict[str, str], ids: list[str]) -> bool:
    for prediction_id in ids:
        if (await http.get(f"/api/predictions/{prediction_id}", headers=auth)).json()["status"] != "done":
            return False
    return True


async def test_a_synchronous_upload_into_a_full_redis_is_a_503_that_costs_nothing(own: Own) -> None:
    auth = await own.person()
    data = samples.photo(68_001)
    async with own.worker():
        async with full(own.redis, stays=True):
            for _ in range(IMAGES_A_DAY + 1):
                refused_for_room(await upload(own.http, auth, data))
            listed = await own.http.get("/api/predictions", headers=auth)
            assert listed.status_code == 200 and listed.json()["total"] == 0, listed.text
        assert originals_of(own.settings, data) == []
        # Not counted against the day's images: with room, the same person's uploads go through.
        for seed in range(IMAGES_A_DAY):
            answered = await upload(own.http, auth, samples.photo(68_010 + seed))
            assert answered.status_code == 200 and answered.json()["status"] == "done", answered.text


async def test_a_result_in_the_database_is_answered_while_redis_is_full(own: Own) -> None:
    """Found in review: a cache hit first counted itself in Redis, which refuses writes when full: the
    upload of an image already classified got 503, and a collection holding one stopped at it."""
    auth, data = await own.person(), samples.photo(68_080)
    async with own.worker():
        first = await upload(own.http, auth, data)
        assert first.status_code == 200 and first.json()["status"] == "done", first.text
        hits = int(await own.redis.get(keys.CACHE_HITS) or 0)
        async with full(own.redis, stays=True):
            again = await upload(own.http, auth, data)
    assert again.status_code == 200, again.text
    assert again.json()["label"] == first.json()["label"]
    assert int(await own.redis.get(keys.CACHE_HITS) or 0) == hits  # uncounted: the counter is statistics only


async def test_a_full_redis_leaves_sign_ins_checks_and_pages_answering(own: Own) -> None:
    email = own.email()
    async with (
        own.worker(),
        from_address(own.app, "127.0.0.1") as person,
        from_address(own.app, "127.0.0.1") as admin,
        from_address(own.app, "203.0.113.68") as stranger,
    ):
        await sign_up_page(person, email)
        assert (await log_in_page(admin, own.settings.admin_email, own.settings.admin_password)).status_code == 303
        async with full(own.redis, stays=True):
            right = await own.http.post("/api/auth/login", json={"email": email, "password": PASSWORD})
            assert right.status_code == 200, right.text
            wrong = await own.http.post("/api/auth/login", json={"email": email, "password": "not the password"})
            assert wrong.status_code == 401, wrong.text
            assert (await log_in_page(stranger, email, PASSWORD)).status_code == 303
            ready = await own.http.get("/health/ready")
            assert ready.status_code == 200 and ready.json()["workers"] == 1, ready.text
            metrics = await own.http.get("/metrics")  # from this machine, as no METRICS_TOKEN is set
            assert metrics.status_code == 200, metrics.text
            assert "app_redis_up 1.0" in metrics.text and "app_workers_live 1.0" in metrics.text, metrics.text
            assert (await stranger.get("/metrics")).status_code == 401  # from elsewhere, without the token
            for page in ("/admin/", "/admin/status", "/history", "/"):
                shown = await (admin if page.startswith("/admin") else person).get(page)
                assert shown.status_code == 200, (page, shown.status_code, shown.text[-2000:])
            sent = await upload_page(person, samples.photo(68_020))
            assert sent.status_code == 503 and "full" in sent.text, sent.text[-2000:]
            assert int(sent.headers["Retry-After"]) > 0 and sent.headers.get("HX-Retarget") == "#messages"
            # Signing out must write the token's revocation: refused for now (docs/capacity.md), and said so.
            token = {"Authorization": f"Bearer {right.json()['access_token']}"}
            refused_for_room(await own.http.post("/api/auth/logout", headers=token))
            left = await post_form(stranger, "/logout", {})
            assert left.status_code == 503 and int(left.headers["Retry-After"]) > 0, left.text[-2000:]
        assert (await own.http.post("/api/auth/logout", headers=token)).status_code == 200
        assert (await post_form(stranger, "/logout", {})).status_code == 303


async def test_what_was_accepted_while_redis_was_full_finishes_once_there_is_room(own: Own) -> None:
    auth = await own.person()
    async with own.worker():
        async with full(own.redis, stays=True):
            ids = await sent_later(own, auth, [68_030, 68_031])
            files = [("files", (f"{n}.jpg", samples.photo(68_040 + n))) for n in range(2)]
            started = await own.http.post("/api/collections", headers=auth, files=files)
            # Its start is serialised by a lock in Redis, which a full one refuses: 503, nothing kept.
            refused_for_room(started)
            listed = await own.http.get("/api/collections", headers=auth)
            assert listed.status_code == 200 and listed.json()["total"] == 0, listed.text

        async def done() -> bool:
            return await all_done(own.http, auth, ids)

        await eventually(done, seconds=DRAIN_S, what="the uploads accepted while Redis was full, classified")


async def test_a_redis_full_of_jobs_drains_as_the_workers_free_it(own: Own) -> None:
    """Full because its streams hold jobs nobody has read (the workers down, or slower than the uploads): what
    comes meanwhile waits in the database, and everything finishes as the workers free room, untouched by hand."""
    first, second, later = await own.person(), await own.person(), await own.person()
    fed = {0: await sent_later(own, first, range(68_050, 68_050 + IMAGES_A_DAY))}
    fed[1] = await sent_later(own, second, range(68_060, 68_060 + IMAGES_A_DAY))

    async def on_the_streams() -> bool:
        """Their jobs in Redis, not only their rows marked: the feeder marks the rows before it sends the jobs.
        Filled when only some were sent (3 runs in 30), Redis kept too little room for the rest, once the
        worker had freed what the others held, to take one more (sending a job takes about twice its size)."""
        held = [await own.redis.xlen(stream) for stream in await bulk_streams(own.redis)]
        return sum(held) == len(fed[0]) + len(fed[1])

    await eventually(on_the_streams, what="the feeder to put the first uploads on the streams")
    async with full(own.redis, short=SHORT):
        maxmemory = (await own.redis.config_get("maxmemory"))["maxmemory"]
        waiting = await sent_later(own, later, [68_070])  # 202: it waits in the database
        async with own.worker():

            async def finished() -> bool:
                return (
                    await all_done(own.http, first, fed[0])
                    and await all_done(own.http, second, fed[1])
                    and await all_done(own.http, later, waiting)
                )

            await eventually(finished, seconds=DRAIN_S, what="every upload classified as the worker freed room")
        assert (await own.redis.config_get("maxmemory"))["maxmemory"] == maxmemory  # nobody made room by hand
