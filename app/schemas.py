"""The JSON shapes of predictions, feedback and collections, written once: the API answers them as they
are, and the pages (and the CSV) read the same shapes as dicts (`predictions.result_dict`,
`feedback.feedback_dict`).

Here, beside the models and not in app/web, so that the domain modules can use them too. Timestamps stay
ISO strings (`datetime.isoformat`), as clients have always received them.
"""

from __future__ import annotations

from typing import Any

import msgspec

from app.models import Collection, CollectionStatus, Feedback, Prediction, Status


class TopOut(msgspec.Struct):
    """One of the five most likely classes."""

    label: str
    wnid: str
    score: float


class ModelOut(msgspec.Struct):
    """The model that made (or will make) a prediction."""

    name: str
    version: str
    weights: str
    # False for MODEL_WEIGHTS=random: the same compute, meaningless labels (tests and benchmarks).
    trained: bool


class PredictionOut(msgspec.Struct, kw_only=True):
    id: str
    status: Status
    label: str | None
    wnid: str | None
    score: float | None
    top5: list[TopOut]
    model: ModelOut
    untrained: bool  # not model.trained: kept for the clients that read it
    # Whether another upload of the same image answered this one: admins only, for it tells what others sent.
    cached: bool | msgspec.UnsetType = msgspec.UNSET
    latency_ms: float | None
    image_sha256: str
    file_name: str
    error: str | None
    created_at: str
    finished_at: str | None


class FeedbackOut(msgspec.Struct):
    id: int
    prediction_id: str
    user_id: int
    is_correct: bool
    correct_label: str | None
    correct_wnid: str | None
    comment: str
    created_at: str
    updated_at: str


class Progress(msgspec.Struct):
    """How many images of a collection are in each state, out of `total`."""

    total: int
    queued: int
    done: int
    failed: int


class CollectionOut(msgspec.Struct):
    id: str
    name: str
    created_at: str
    # reading: the archive is being read, items appear as they are checked; then classifying, then done.
    status: CollectionStatus
    progress: Progress
    error: str | None  # why reading the archive stopped early, if it did


UNTRAINED_WEIGHTS = "random"  # MODEL_WEIGHTS of the untrained model: same compute, meaningless labels


def weights_trained(weights: str) -> bool:
    """Whether a model with these weights (MODEL_WEIGHTS) gives real answers: all but `random` do."""
    return weights != UNTRAINED_WEIGHTS


STORED_TOP5 = msgspec.json.Decoder(list[TopOut] | None)


def stored_top5(stored: str | bytes | None) -> list[tuple[str, float]]:
    """(label, score) of a prediction's top5, from its column's JSON text (read as text: a long CSV skips the
    ORM's decoding), checked as `prediction_out` checks it."""
    if not stored:
        return []
    return [(t.label, t.score) for t in STORED_TOP5.decode(stored) or []]


def prediction_out(prediction: Prediction, *, show_cached: bool) -> PredictionOut:
    trained = weights_trained(prediction.model_weights)
    return PredictionOut(
        id=str(prediction.id),
        status=Status(prediction.status),
        label=prediction.label,
        wnid=prediction.wnid,
        score=prediction.score,
        # Stored as JSON by the worker or the cache: checked here, so a bad row fails loudly, not a client.
        top5=msgspec.convert(prediction.top5 or [], list[TopOut]),
        model=ModelOut(prediction.model_name, prediction.model_version, prediction.model_weights, trained),
        untrained=not trained,
        cached=prediction.cached if show_cached else msgspec.UNSET,
        latency_ms=prediction.latency_ms,
        image_sha256=prediction.image_sha256,
        file_name=prediction.file_name,
        error=prediction.error,
        created_at=prediction.created_at.isoformat(),
        finished_at=prediction.finished_at.isoformat() if prediction.finished_at else None,
    )


def feedback_out(feedback: Feedback) -> FeedbackOut:
    return FeedbackOut(
        id=feedback.id,
        prediction_id=str(feedback.prediction_id),  # type: ignore[attr-defined]
        user_id=feedback.user_id,  # type: ignore[attr-defined]
        is_correct=feedback.is_correct,
        correct_label=feedback.correct_label,
        correct_wnid=feedback.correct_wnid,
        comment=feedback.comment,
        created_at=feedback.created_at.isoformat(),
        updated_at=feedback.updated_at.isoformat(),
    )


def collection_out(collection: Collection, counts: dict[str, int]) -> CollectionOut:
    """`counts` as `collections.progress_of` gives them: `total` and one count per status."""
    status = CollectionStatus(collection.status)
    if status == CollectionStatus.CLASSIFYING and not counts.get(Status.QUEUED):
        status = CollectionStatus.DONE  # before the feeder's next round says so
    return CollectionOut(
        id=str(collection.id),
        name=collection.name,
        created_at=collection.created_at.isoformat(),
        status=status,
        progress=msgspec.convert(counts, Progress),
        error=collection.error,
    )


def as_dict(shape: msgspec.Struct) -> dict[str, Any]:
    """A shape as the plain dict the pages and the CSV read (enums as their values)."""
    found: dict[str, Any] = msgspec.to_builtins(shape)
    return found
