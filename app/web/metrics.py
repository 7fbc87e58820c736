"""Prometheus metrics.

Request metrics come from Litestar's Prometheus middleware (multi-process safe when
PROMETHEUS_MULTIPROC_DIR is set). Queue and worker metrics are read from Redis at scrape time
(workers report cumulative histograms in their heartbeats), so every web process answers the
same, however many there are and wherever the workers run. With Redis or the database down, a
scrape still answers with what it could read (the request metrics first: an outage is when they are
needed), `app_redis_up` and `app_database_up` say which could not be, and the figures read from it
are left out rather than reported as zero (`app_backlog` needs both).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from litestar import Request, Response, get
from litestar.exceptions import NotAuthorizedException
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from redis.asyncio import Redis

from app.jobs.producer import Workers, queue_depth, workers_of
from app.jobs.protocol import BATCH_SIZE_BUCKETS, INFERENCE_SECONDS_BUCKETS
from app.jobs.results import cache_hits
from app.models import Prediction, Status
from app.outages import dependency_down
from app.settings import Settings, is_loopback
from app.web.deps import client_address, services

log = logging.getLogger(__name__)
T = TypeVar("T")


def _histogram(
    name: str, doc: str, buckets: Sequence[float], counts: Iterable[Sequence[int]], total: float
) -> HistogramMetricFamily:
    summed = [0] * (len(buckets) + 1)
    for worker_counts in counts:
        for i, count in enumerate(worker_counts[: len(summed)]):
            summed[i] += count
    cumulative, running = [], 0
    for bound, count in zip([*buckets, float("inf")], summed, strict=True):
        running += count
        cumulative.append((str(bound) if bound != float("inf") else "+Inf", running))
    return HistogramMetricFamily(name, doc, buckets=cumulative, sum_value=total)


@dataclass(frozen=True)
class RedisFigures:
    depth: int
    workers: Workers
    hits: int


class QueueCollector(Collector):
    """A snapshot of Redis and the database taken by the scrape; None for one that could not be read. The
    worker count and the histograms are of the workers of this app's model (its capacity); the series of
    each worker cover every live one, with its model as a label."""

    def __init__(self, redis: RedisFigures | None, waiting: int | None) -> None:
        self.redis = redis
        self.waiting = waiting

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "app_redis_up", "1 if this scrape read Redis, else 0", value=int(self.redis is not None)
        )
        yield GaugeMetricFamily(
            "app_database_up", "1 if this scrape read the database, else 0", value=int(self.waiting is not None)
        )
        if self.waiting is not None:
            yield GaugeMetricFamily("app_waiting", "Images waiting in the database for the streams", value=self.waiting)
        if self.redis is not None:
            yield from self._from_redis(self.redis)

    def _from_redis(self, redis: RedisFigures) -> Iterable[Metric]:
        mine, everyone = redis.workers.mine, redis.workers.mine + redis.workers.others
        yield GaugeMetricFamily("app_queue_depth", "Jobs waiting or in flight", value=redis.depth)
        if self.waiting is not None:
            # The streams hold a window of each collection (FEED_WINDOW): the rest waits in the database.
            yield GaugeMetricFamily(
                "app_backlog",
                "The workers' whole backlog: jobs on the streams and images waiting in the database for them",
                value=redis.depth + self.waiting,
            )
        yield GaugeMetricFamily(
            "app_workers_live", "Live workers of this app's model (the others leave its jobs)", value=len(mine)
        )
        yield CounterMetricFamily("app_cache_hits", "Uploads answered from the result cache", value=redis.hits)
        # Speed while busy, not throughput: rate(app_worker_images_total[1m]) is that.
        rate = GaugeMetricFamily(
            "app_worker_images_per_second",
            "Speed when busy: images/s of inference over recent batches",
            labels=["worker", "model"],
        )
        images = CounterMetricFamily("app_worker_images", "Images classified", labels=["worker", "model"])
        for worker in everyone:
            rate.add_metric([worker.name, worker.model_id], worker.images_per_second)
            images.add_metric([worker.name, worker.model_id], worker.images)
        yield rate
        yield images
        yield _histogram(
            "app_batch_size",
            "Images per batched inference",
            BATCH_SIZE_BUCKETS,
            (w.batch_size_counts for w in mine),
            float(sum(w.images for w in mine)),
        )
        yield _histogram(
            "app_inference_seconds",
            "Seconds per batched inference",
            INFERENCE_SECONDS_BUCKETS,
            (w.inference_counts for w in mine),
            sum(w.inference_seconds_total for w in mine),
        )


def _request_metrics(multiproc_dir: str) -> bytes:
    if multiproc_dir:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=multiproc_dir)
        return generate_latest(registry)
    return generate_latest(REGISTRY)


def may_read_metrics(settings: Settings, client_host: str, authorization: str) -> bool:
    """Queue depths, users' activity and worker names are for operators: the token, or this machine."""
    if settings.metrics_token:
        return hmac.compare_digest(authorization.encode(), f"Bearer {settings.metrics_token}".encode())
    return is_loopback(client_host)


@get("/metrics", include_in_schema=False, exclude_from_auth=True)
async def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    settings = services(request).settings
    if not may_read_metrics(settings, client_address(request), request.headers.get("authorization", "")):
        raise NotAuthorizedException("Metrics need the METRICS_TOKEN bearer token, or a request from this machine")
    redis = services(request).redis
    figures = await _unless_down(_read_redis(redis, settings.model_id), "Redis")
    waiting = await _unless_down(Prediction.filter(status=Status.QUEUED, enqueued_at__isnull=True).count(), "database")
    snapshot = CollectorRegistry()
    snapshot.register(QueueCollector(figures, waiting))
    body = _request_metrics(settings.prometheus_multiproc_dir) + generate_latest(snapshot)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


async def _read_redis(redis: Redis, model_id: str) -> RedisFigures:
    return RedisFigures(await queue_depth(redis), await workers_of(redis, model_id), await cache_hits(redis))


async def _unless_down(reading: Awaitable[T], what: str) -> T | None:
    """What `reading` reads, or None if its dependency is down or busy (the scrape answers without it)."""
    try:
        return await reading
    except Exception as exc:
        if not dependency_down(exc):
            raise
        log.warning("/metrics without the %s figures: %r", what, exc)
        return None
