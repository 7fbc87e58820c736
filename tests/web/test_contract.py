"""The OpenAPI document is a contract programs can rely on: a Python client generated from /schema/openapi.json
(openapi-python-client) runs the main flow over real HTTP with a live worker. (Schemathesis checks that every
answer of every operation is documented, status, body and headers: tests/web/test_fuzz.py.)"""

from __future__ import annotations

import csv
import importlib
import io
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest

from tests import samples

BIN = Path(sys.executable).parent
PACKAGE = "imageclass_client"


@pytest.fixture(scope="module")
def generated(live_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], ModuleType]]:
    """Import a module of a client generated from the live app's schema (generation fails on any warning:
    every operation and model must make it into the client)."""
    root = tmp_path_factory.mktemp("client")
    spec = httpx.get(f"{live_url}/schema/openapi.json")
    assert spec.status_code == 200, spec.text
    (root / "openapi.json").write_bytes(spec.content)
    (root / "config.yaml").write_text("post_hooks: []\n")  # no formatter needed to import it
    command = [str(BIN / "openapi-python-client"), "generate", "--path", str(root / "openapi.json")]
    command += ["--config", str(root / "config.yaml"), "--output-path", str(root / PACKAGE), "--meta", "none"]
    command += ["--fail-on-warning"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    sys.path.insert(0, str(root))
    try:
        yield lambda name: importlib.import_module(f"{PACKAGE}.{name}")
    finally:
        sys.path.remove(str(root))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(f"{PACKAGE}.")]:
            del sys.modules[name]


def until(fetch: Callable[[], Any], done: Callable[[Any], bool], seconds: float = 60) -> Any:
    deadline = time.monotonic() + seconds
    while not done(found := fetch()):
        assert time.monotonic() < deadline, f"not done after {seconds} s: {found}"
        time.sleep(0.2)
    return found


def test_a_generated_client_runs_the_main_flow(live_url: str, generated: Callable[[str], ModuleType]) -> None:
    client_module, models, types = generated("client"), generated("models"), generated("types")
    # One module per operation, in a package per tag, named after the operation id.
    register, login, me = (generated(f"api.auth.{name}") for name in ("register", "login", "me"))
    create, read, listed = (
        generated(f"api.predictions.{name}") for name in ("create_prediction", "read_prediction", "list_predictions")
    )
    give_feedback, search_labels = generated("api.feedback.give_feedback"), generated("api.labels.search_labels")
    create_collection, read_collection, collection_csv = (
        generated(f"api.collections.{name}") for name in ("create_collection", "read_collection", "collection_csv")
    )
    # Undocumented statuses raise: every answer below is one the schema names.
    anonymous = client_module.Client(base_url=live_url, raise_on_unexpected_status=True, timeout=httpx.Timeout(60))
    email, password = f"client-{uuid4().hex[:8]}@example.com", "correct horse"

    user = register.sync(client=anonymous, body=models.RegisterIn(email=email, password=password, name="Ada"))
    assert isinstance(user, models.UserOut) and user.email == email
    taken = register.sync(client=anonymous, body=models.RegisterIn(email=email, password=password))
    assert isinstance(taken, models.ErrorOut) and taken.status_code == 409
    wrong = login.sync(client=anonymous, body=models.LoginIn(email=email, password="wrong password"))
    assert isinstance(wrong, models.ErrorOut) and wrong.status_code == 401
    token = login.sync(client=anonymous, body=models.LoginIn(email=email, password=password))
    assert isinstance(token, models.TokenOut) and token.token_type == "bearer"
    client = client_module.AuthenticatedClient(
        base_url=live_url, token=token.access_token, raise_on_unexpected_status=True, timeout=httpx.Timeout(60)
    )
    assert me.sync(client=client).email == email

    def upload(seed: int) -> Any:
        return types.File(
            payload=io.BytesIO(samples.photo(seed)), file_name=f"photo-{seed}.jpg", mime_type="image/jpeg"
        )

    # Classify and wait.
    done = create.sync_detailed(client=client, body=models.PredictionForm(file=upload(14_001)))
    assert done.status_code == 200, done.content
    assert done.parsed.status == models.Status.DONE and len(done.parsed.top5) == 5
    assert done.parsed.file_name == "photo-14001.jpg" and done.parsed.model.name
    # Classify without waiting, then poll.
    queued = create.sync_detailed(client=client, body=models.PredictionForm(file=upload(14_002)), wait=False)
    assert queued.status_code == 202, queued.content
    assert queued.headers["location"] == f"/api/predictions/{queued.parsed.id}"
    polled = until(
        lambda: read.sync(client=client, prediction_id=UUID(queued.parsed.id)),
        lambda p: p.status != models.Status.QUEUED,
    )
    assert polled.status == models.Status.DONE and polled.label
    assert {p.id for p in listed.sync(client=client).items} >= {done.parsed.id, queued.parsed.id}
    missing = read.sync(client=client, prediction_id=uuid4())
    assert isinstance(missing, models.ErrorOut) and missing.status_code == 404

    # Feedback, correcting the label with one of the class names.
    label = search_labels.sync(client=anonymous, q="tabby")[0]
    given = give_feedback.sync(
        client=client,
        prediction_id=UUID(polled.id),
        body=models.FeedbackIn(is_correct=False, correct_label=label.name, comment="a cat"),
    )
    assert isinstance(given, models.FeedbackOut)
    assert given.prediction_id == polled.id and given.correct_wnid == label.wnid

    # A collection of a few images, and its CSV.
    form = models.CollectionForm(files=[upload(seed) for seed in (14_003, 14_004, 14_005)], name="trip")
    started = create_collection.sync_detailed(client=client, body=form)
    assert started.status_code == 202, started.content
    collection_id = UUID(started.parsed.id)
    finished = until(
        lambda: read_collection.sync(client=client, collection_id=collection_id),
        lambda c: c.status == models.CollectionStatus.DONE,
    )
    assert finished.progress.total == finished.progress.done == 3 and len(finished.results) == 3
    rows = list(csv.DictReader(io.StringIO(collection_csv.sync(client=client, collection_id=collection_id))))
    assert sorted(row["file_name"] for row in rows) == ["photo-14003.jpg", "photo-14004.jpg", "photo-14005.jpg"]
    assert all(row["label"] for row in rows)
