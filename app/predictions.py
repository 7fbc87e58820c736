"""Submitting an image for classification and waiting for its result. Used by the API and the pages."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID

from litestar.exceptions import HTTPException, NotFoundException, ServiceUnavailableException
from litestar.status_codes import HTTP_504_GATEWAY_TIMEOUT
from redis.exceptions import RedisError
from tortoise import connections
from tortoise.exceptions import IntegrityError
from tortoise.functions import Count
from tortoise.transactions import in_transaction

from app import images, keys, outages, quotas, schemas, text, usage
from app.jobs import producer
from app.jobs.protocol import Job
from app.jobs.results import RESULT_FIELDS
from app.models import Collection, Prediction, Status, User, mark_failed, placeholders
from app.services import Services
from app.stages import stage

Owned = TypeVar("Owned", Prediction, Collection)

# Words for the people who upload: no worker alive is, nearly always, workers still loading the model (the
# first seconds after a start). What to do about it (`python -m app.worker`) is for admins only: the admin
# page and the admins' views of the pages say it (templates/partials/_macros.html).
WARMING_UP = "The classifier is warming up: your image will be classified in a moment"
NO_WORKER = f"{WARMING_UP}; try again in a few seconds"
NO_WORKER_RETRY_AFTER = 5
# How often a waiting request checks whether the results subscription was made again meanwhile.
RECHECK_S = 1.0


class ResultTimeout(HTTPException):
    status_code = HTTP_504_GATEWAY_TIMEOUT


class NoWorker(ServiceUnavailableException):
    """No worker is alive to take a synchronous upload (503 with Retry-After)."""


def unavailable(detail: str, retry_after: int) -> ServiceUnavailableException:
    return ServiceUnavailableException(detail=detail, headers={"Retry-After": str(retry_after)})


async def _check_capacity(services: Services, user: User) -> None:
    """Refuse a synchronous upload that cannot finish within the wait timeout, instead of queueing it
    forever. Users take turns, so the wait counts the user's own backlog, not everyone's."""
    capacity = await services.backlog.capacity(services.redis, user.id, services.settings.model_id)
    if capacity.workers == 0:
        raise NoWorker(detail=NO_WORKER, headers={"Retry-After": str(NO_WORKER_RETRY_AFTER)})
    seconds = capacity.seconds_to_clear()
    if seconds > services.settings.wait_timeout:
        raise unavailable(
            f"The service is busy ({capacity.ahead} images ahead of yours); try again shortly",
            retry_after=max(1, math.ceil(seconds - services.settings.wait_timeout)),
        )


async def _check_async_room(services: Services, user: User) -> None:
    """Async jobs wait in the database, not in a request: they are bounded by a queue length. Past it,
    someone holding less than an equal share of it is still let in, up to twice the length: else a few
    accounts that filled it shut everyone else out until it drained. Called under `services.admitting`:
    each web process adds one at a time, so N processes may pass the bound by N - 1 at most."""
    limit = services.settings.async_queue_limit
    waiting = Prediction.filter(status=Status.QUEUED, collection_id__isnull=True)
    total = await waiting.count()
    if total < limit:
        return
    mine = await waiting.filter(user=user).count()
    others = await waiting.annotate(holders=Count("user_id", distinct=True)).values("holders")
    holders = max(1, int(others[0]["holders"]) + (mine == 0))  # at least 1: it may have drained meanwhile
    if total < 2 * limit and mine < limit / holders:
        return
    raise unavailable(f"The queue is full ({total} images waiting, at most {limit}); try again later", 30)


ORIGINAL_BYTES = "original_bytes"  # a record's key that is no field: its original's size (for `insert`)
# An accepted upload: the checked image, and the earlier result of the same image if there is one.
Accepted = tuple[images.CheckedImage, dict[str, Any] | None]


async def accept(services: Services, user: User, data: bytes) -> Accepted:
    """Check and store an upload, and find its result in the cache: what every upload goes through, alone or in a
    collection, once its quotas were checked (quotas.check_upload, or for a whole collection quotas.check_collection).
    Raises images.ImageRejected; before decoding anything, 507 when the disk is full. An image whose original this
    upload stored is not looked up (a query less for every new image): an original stays while a prediction of it is
    newer than a retention run's cutoff (app/admin.py), so only a run with a cutoff shorter than RESULT_TTL can remove
    one whose result still answers; that image is then classified again."""
    quotas.check_disk(services, len(data))
    image = await services.decoder.check(data, owner=user.id, disk=services.disk)
    if image.new:
        return image, None
    with stage("database"):
        return image, await earlier_result(services, image.sha256, user.id)


def earlier_result_sql(dialect: str) -> str:
    """The lookup of `earlier_result`, its values in the order (sha256, status, user, model name, weights,
    since). `+user_id`: not by the index on the person's rows, which SQLite chose, reading all their history."""
    marks = placeholders(dialect, 6)
    return (
        f"SELECT {', '.join(RESULT_FIELDS)} FROM {Prediction._meta.db_table} WHERE image_sha256 = {{}} AND status"
        " = {} AND +user_id = {} AND model_name = {} AND model_weights = {} AND finished_at >= {} LIMIT 1"
    ).format(*marks)


async def earlier_result(services: Services, sha256: str, user_id: int) -> dict[str, Any] | None:
    """The result of the same image by the same model for the same person, finished within RESULT_TTL, if
    any: the database is the result cache. Never another person's: answered at once, it would tell that
    they sent this image. It holds every result already (a copy in Redis grew Redis by 0.3 kB per image for
    a week, and was lost with it); the lookup reads the image's rows only (the index on image_sha256 and
    status), and is written out because the query builder took 0.45 ms of CPU per upload, the query 0.17."""
    settings = services.settings
    connection = connections.get("default")
    fields = Prediction._meta.fields_map
    since = fields["finished_at"].to_db_value(datetime.now(UTC) - timedelta(seconds=settings.result_ttl), Prediction)
    values = [sha256, Status.DONE.value, user_id, settings.model_name, settings.model_weights, since]
    rows = await connection.execute_query_dict(earlier_result_sql(connection.capabilities.dialect), values)
    if not rows:
        return None
    with contextlib.suppress(RedisError):  # statistics only: a full Redis refuses it, not the answer
        await services.redis.incr(keys.CACHE_HITS)
    found = dict(rows[0])
    found["top5"] = fields["top5"].to_python_value(found["top5"])
    return found


def newest_sql(dialect: str, count: int) -> str:
    """The ids of a person's newest prediction of each of `count` images, its values in the order (user,
    sha256, ...). `+user_id` as in `earlier_result_sql`: by the images' rows, not all of the person's."""
    user_mark, *sha_marks = placeholders(dialect, count + 1)
    return (
        "SELECT id FROM (SELECT id, ROW_NUMBER() OVER (PARTITION BY image_sha256 ORDER BY created_at DESC) AS nth"
        f" FROM {Prediction._meta.db_table} WHERE +user_id = {user_mark} AND image_sha256 IN ({', '.join(sha_marks)}))"
        " AS latest WHERE nth = 1"
    )


async def newest_of_each(user: User, sha256s: list[str]) -> list[Prediction]:
    """A person's newest prediction of each of these images, read one row per image however often each was
    sent (a cache hit is cheap, so one image can have tens of thousands: all of them were read)."""
    if not sha256s:
        return []
    connection = connections.get("default")
    newest = newest_sql(connection.capabilities.dialect, len(sha256s))
    rows = await connection.execute_query_dict(newest, [user.id, *sha256s])
    return await Prediction.filter(id__in=[row["id"] for row in rows])


async def record_of(services: Services, user: User, image: images.CheckedImage, file_name: str) -> dict[str, Any]:
    """The fields of a new Prediction for an accepted image, charged its bytes unless its person keeps that
    original already (a query only when this upload did not store it), and its bytes (ORIGINAL_BYTES)."""
    with stage("database"):
        charged = await usage.charged_bytes(user.id, image.sha256, len(image.data), image.new)
    return {
        "user": user,
        "image_sha256": image.sha256,
        "image_path": image.relative_path,
        "image_bytes": charged,
        ORIGINAL_BYTES: len(image.data),
        "file_name": text.clean_file_name(file_name),
        "model_name": services.settings.model_name,
        "model_weights": services.settings.model_weights,
    }


async def insert(record: dict[str, Any], **fields: Any) -> Prediction:
    """A new Prediction of `record`. Charged 0 when another one of its person's, made meanwhile, was charged the
    original (an upload of it at once: both found it new; the index predictions_charged_once refuses the second);
    one charged 0 is charged after all if a retention run let the charged one go meanwhile (usage), in one
    transaction: made, then its charge failed ("database is locked"), it stayed as its upload was refused."""
    values = {name: value for name, value in record.items() if name != ORIGINAL_BYTES}
    if values["image_bytes"]:
        try:
            return await Prediction.create(**values, **fields)  # one statement: charged, nothing after it
        except IntegrityError:
            values["image_bytes"] = 0  # or another constraint (a collection's entry twice): refused again below
    async with in_transaction():
        prediction = await Prediction.create(**values, **fields)
        return await usage.charged_if_none(prediction, record[ORIGINAL_BYTES])


async def create_cached(record: dict[str, Any], cached: dict[str, Any], latency_ms: float | None = None) -> Prediction:
    return await insert(
        record, **cached, status=Status.DONE, cached=True, latency_ms=latency_ms, finished_at=datetime.now(UTC)
    )


async def submit(
    services: Services,
    user: User,
    data: bytes,
    file_name: str = "",
    wait: bool = True,
    *,
    defer_without_worker: bool = False,
) -> Prediction:
    """Check, store and classify an upload: from the cache when possible, else through the queue. A
    synchronous one goes on the user's interactive stream at once; an async one (`wait=False`) waits in
    the database for the feeder, behind everyone's interactive uploads. With no worker alive a synchronous
    one is refused (NoWorker), or with `defer_without_worker` made an async one (see `models.deferred`)."""
    started = time.perf_counter()
    # The user's quotas first: refused cheaply, before anything is decoded or stored (even a cache hit); the upload
    # counts as on its way until its row is made.
    async with quotas.upload_allowance(services, user, data):
        image, cached = await accept(services, user, data)
        try:
            record = await record_of(services, user, image, file_name)
            if cached is not None:
                with stage("database"):
                    return await create_cached(record, cached, latency_ms=(time.perf_counter() - started) * 1000)
            if not wait:
                return await _defer(services, record, image)
            try:
                with stage("redis"):
                    await _check_capacity(services, user)
            except NoWorker:
                if not defer_without_worker:
                    raise
                return await _defer(services, record, image)
            with stage("database"):
                prediction = await insert(record, status=Status.QUEUED, enqueued_at=datetime.now(UTC))
        # Refused (no worker, busy, a full queue) or failed, with no row made. Not on a cancellation: the row may
        # have been made as it came; an original left then goes with the retention run (admin._prune_unnamed).
        except Exception:
            await services.decoder.forget(image, services.disk)
            raise
    job = Job(str(prediction.id), image.sha256, services.settings.model_id, image.pixels)
    # Before the job exists, so its result cannot come before anyone listens (`wait` takes it up).
    expected = services.waiter.expect(job.prediction_id)
    try:
        with stage("redis"):
            await producer.enqueue(services.redis, user.id, job)
        services.backlog.enqueued(user.id)
    except BaseException as exc:
        # Given up on (cancelled) too: the waiter is this request's to forget. The row stays queued, and is
        # enqueued again if its job never got there (app/recovery.py). A full Redis took nothing of the job: no row
        # either, as refused before it (failed, it stayed in the history and counted against the quotas).
        services.waiter.forget(job.prediction_id, expected)
        if isinstance(exc, Exception) and outages.redis_full(exc):
            await usage.withdraw(prediction)
            await services.decoder.forget(image, services.disk)
        elif isinstance(exc, Exception):
            await mark_failed([str(prediction.id)], "The queue was unavailable")
        raise
    return prediction


async def _defer(services: Services, record: dict[str, Any], image: images.CheckedImage) -> Prediction:
    with stage("database"):
        async with services.admitting:
            await _check_async_room(services, record["user"])
            prediction = await insert(record, status=Status.QUEUED)
    services.kept.keep(str(prediction.id), image.pixels)
    services.nudge_feeder()
    return prediction


async def wait(services: Services, prediction: Prediction, seconds: float) -> Prediction:
    """The prediction once finished; 504 (with its id, to fetch later) past the timeout. One that `submit`
    just enqueued is answered from the worker's message, without reading its row back."""
    if prediction.status != Status.QUEUED:
        return prediction  # from the cache
    prediction_id = str(prediction.id)
    future = services.waiter.expected(prediction_id)
    if future is None:  # not expected by this process: listen, then look at the row
        future = services.waiter.expect(prediction_id)
        await prediction.refresh_from_db()
        if prediction.status != Status.QUEUED:
            services.waiter.forget(prediction_id, future)
            return prediction
    try:
        with stage("waiting"):
            message = await _message(services, prediction, future, seconds)
    finally:
        services.waiter.forget(prediction_id, future)
    if message is None:  # its message was lost, and the row says it is finished
        return prediction
    return await _finished(prediction, message)


async def _message(
    services: Services, prediction: Prediction, future: asyncio.Future[dict[str, Any]], seconds: float
) -> dict[str, Any] | None:
    """The worker's message, or None when the row is found finished without one: a result published while the
    subscription was being made again (Redis restarted) is lost, so the row is read then, and at the end."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    waiter, checked = services.waiter, False
    while True:
        with contextlib.suppress(TimeoutError):
            return await asyncio.wait_for(asyncio.shield(future), max(0.0, min(deadline - loop.time(), RECHECK_S)))
        ended = loop.time() >= deadline
        if ended or (waiter.resubscribed_since(future) and not checked):
            checked = True  # once then (the row is read again at the end)
            await prediction.refresh_from_db()
            if prediction.status != Status.QUEUED:
                return None
        if ended:
            break
    prediction_id = str(prediction.id)
    raise ResultTimeout(
        detail=f"No result within {seconds:g} s; fetch it later from /api/predictions/{prediction_id}",
        headers={"Location": f"/api/predictions/{prediction_id}"},
        extra={"id": prediction_id},
    )


async def _finished(prediction: Prediction, message: dict[str, Any]) -> Prediction:
    """The prediction as the worker's message says it now is; read back when the message does not say."""
    fields = message.get("fields")
    if message.get("status") != Status.DONE or not isinstance(fields, dict) or "finished_at" not in fields:
        await prediction.refresh_from_db()
        return prediction
    for name in (*RESULT_FIELDS, "latency_ms"):
        setattr(prediction, name, fields.get(name))
    prediction.status = Status.DONE
    prediction.finished_at = datetime.fromisoformat(fields["finished_at"])
    return prediction


async def visible(model: type[Owned], user: User, object_id: Any, what: str) -> Owned:
    """A row its owner (or an admin) may see; 404 for everyone else, as if it did not exist."""
    found = await model.get_or_none(id=object_id)
    if found is None or (found.user_id != user.id and not user.is_admin):  # type: ignore[attr-defined]
        raise NotFoundException(f"No such {what}")
    return found


async def visible_prediction(user: User, prediction_id: UUID | str) -> Prediction:
    return await visible(Prediction, user, prediction_id, "prediction")


def result_dict(prediction: Prediction) -> dict[str, Any]:
    """The API's JSON of a prediction, as a dict (for the pages, which show `cached` to admins only, and the CSV)."""
    return schemas.as_dict(schemas.prediction_out(prediction, show_cached=True))


def page_result(prediction: Prediction) -> dict[str, Any]:
    """What the pages show of a prediction: `result_dict`, and whether its original is still stored (not if
    pruned, or refused at upload), so they ask for no image that answers 404. Not in the API's JSON."""
    return {**result_dict(prediction), "has_image": bool(prediction.image_path)}
