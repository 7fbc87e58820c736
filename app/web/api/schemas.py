"""Response bodies of the JSON API, so that /schema documents every one of them.

The shapes of single predictions, feedback and collections live in app/schemas.py (the domain and the pages
use them too); here are the ones only the API answers: pages of them, accounts and health.
"""

from __future__ import annotations

from uuid import UUID

import msgspec

from app.labels import Label
from app.models import User
from app.schemas import CollectionOut, FeedbackOut, PredictionOut


class UserOut(msgspec.Struct):
    id: int
    email: str
    name: str
    is_admin: bool
    created_at: str

    @classmethod
    def of(cls, user: User) -> UserOut:
        return cls(user.id, user.email, user.name, user.is_admin, user.created_at.isoformat())


class TokenOut(msgspec.Struct):
    access_token: str
    token_type: str
    expires_in: int


class SignedOut(msgspec.Struct):
    detail: str


class PredictionPage(msgspec.Struct):
    items: list[PredictionOut]
    page: int
    per_page: int
    total: int
    more: bool = False  # more items than `total`: counts and pages stop at LIST_WINDOW (10,000)
    # The last item's id when more follow it (past the window too): ask for `before=` it; null on the last page.
    next_before: UUID | None = None


class LookupOut(msgspec.Struct):
    """The latest prediction of each image asked for, by sha256; images never classified are left out."""

    found: dict[str, PredictionOut]


class FeedbackPage(msgspec.Struct):
    items: list[FeedbackOut]
    page: int
    per_page: int
    total: int
    more: bool = False  # more items than `total`: counts and pages stop at LIST_WINDOW (10,000)
    # The last item's id when more follow it (past the window too): ask for `before=` it; null on the last page.
    next_before: int | None = None


class LabelOut(msgspec.Struct):
    """One of the 1,000 ImageNet classes."""

    index: int
    wnid: str
    name: str

    @classmethod
    def of(cls, label: Label) -> LabelOut:
        return cls(label.index, label.wnid, label.name)


class CollectionPage(msgspec.Struct):
    items: list[CollectionOut]
    page: int
    per_page: int
    total: int
    more: bool = False  # more items than `total`: counts and pages stop at LIST_WINDOW (10,000)
    # The last item's id when more follow it (past the window too): ask for `before=` it; null on the last page.
    next_before: UUID | None = None


class CollectionDetail(CollectionOut):
    """A collection with one page of its results; `matching` counts the results the filters select."""

    results: list[PredictionOut]
    page: int
    per_page: int
    matching: int


class Health(msgspec.Struct):
    status: str


class WorkerBackend(msgspec.Struct):
    """What a live worker runs and why: `backend` is `tensorflow` or `openvino` (`stand-in` in tests), `engine`
    its version and precision, `choice` the evidence when INFERENCE_BACKEND=auto chose it (else that it was set).
    Empty strings: a worker from before these were reported."""

    worker: str
    backend: str
    engine: str
    choice: str


class Readiness(msgspec.Struct):
    """What the service needs to classify; `status` is "ready" or "not ready" (then with a 503). `workers`: the
    live workers of `model`, this app's; `backends`: each one's inference backend and why. `other_workers`: live
    workers of another model (name: model id), not counted, as they leave this app's jobs."""

    database: bool
    redis: bool
    workers: int
    queue_depth: int | None
    status: str
    backends: list[WorkerBackend] = msgspec.field(default_factory=list)
    model: str = ""
    other_workers: dict[str, str] = msgspec.field(default_factory=dict)
