"""The result cache's format: compact (its size is what grows with the work), read back in full."""

from __future__ import annotations

import json

from redis.asyncio import Redis

from app import keys, labels
from app.jobs.results import cache_hits, cache_value, cached_result, result_fields

TOP = [(207, 0.912345678), (208, 0.05), (250, 0.02), (1, 0.01), (999, 0.005)]


def test_the_fields_name_the_classes_in_order() -> None:
    fields = result_fields(TOP, "keras-3")
    assert [t["label"] for t in fields["top5"]] == [labels.LABELS[i].name for i, _ in TOP]
    assert (fields["label"], fields["wnid"], fields["score"]) == (
        labels.LABELS[207].name,
        labels.LABELS[207].wnid,
        0.912346,
    )
    assert fields["model_version"] == "keras-3"


def test_a_cached_value_is_a_sixth_of_the_fields_spelled_out() -> None:
    compact = cache_value(TOP, "openvino-2026.4.1-bf16")
    spelled_out = json.dumps(result_fields(TOP, "openvino-2026.4.1-bf16"))
    assert len(compact) <= 130 and len(compact) * 5 < len(spelled_out)


async def test_the_cache_gives_back_every_field_and_counts_the_hit(redis: Redis) -> None:
    key = keys.result_cache("model-r", "c" * 64)
    await redis.set(key, cache_value(TOP, "v1"), ex=60)
    try:
        hits = await cache_hits(redis)
        assert await cached_result(redis, "model-r", "c" * 64) == result_fields(TOP, "v1")
        assert await cache_hits(redis) == hits + 1
    finally:
        await redis.delete(key)


async def test_a_value_in_another_format_is_a_miss_not_an_error(redis: Redis) -> None:
    key = keys.result_cache("model-r", "d" * 64)
    old = json.dumps(result_fields(TOP, "v0"))  # the format before this one: the fields spelled out
    for value in (old, "not json", "[1]", '["v", [["x", 1]]]'):
        await redis.set(key, value, ex=60)
        hits = await cache_hits(redis)
        assert await cached_result(redis, "model-r", "d" * 64) is None
        assert await cache_hits(redis) == hits
    await redis.delete(key)
