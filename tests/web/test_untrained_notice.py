"""With MODEL_WEIGHTS=random every answer is meaningless, and says so wherever results appear: a result, the
history, a collection's page, the admin page, the CSV files and the API (`model.trained`)."""

from __future__ import annotations

import csv
import io

from litestar import Litestar
from redis.asyncio import Redis

from app import keys
from app.models import Collection, CollectionStatus, Feedback, Prediction, User
from tests.helpers import read_elsewhere, unique_email
from tests.page_helpers import HX, Client, make_prediction, user_of

NOTICE = "<strong>Untrained model.</strong>"


async def trained_and_untrained(user: User) -> tuple[Prediction, Prediction]:
    return (
        await make_prediction(user, "goldfish", model_weights="imagenet"),
        await make_prediction(user, "tabby cat", model_weights="random"),
    )


async def test_the_api_says_whether_the_model_is_trained(client: Client, auth: dict[str, str]) -> None:
    me = await client.get("/api/users/me", headers=auth)
    user = await User.get(email=me.json()["email"])
    trained, untrained = await trained_and_untrained(user)
    real = (await client.get(f"/api/predictions/{trained.id}", headers=auth)).json()
    fake = (await client.get(f"/api/predictions/{untrained.id}", headers=auth)).json()
    assert real["model"]["trained"] is True and real["untrained"] is False
    assert fake["model"]["trained"] is False and fake["untrained"] is True  # the old field stays
    listed = (await client.get("/api/predictions", headers=auth)).json()
    assert {item["model"]["trained"] for item in listed["items"]} == {True, False}


async def test_a_result_says_so(user_browser: Client) -> None:
    trained, untrained = await trained_and_untrained(await user_of(user_browser))
    assert NOTICE in (await user_browser.get(f"/predictions/{untrained.id}")).text
    assert NOTICE not in (await user_browser.get(f"/predictions/{trained.id}")).text


async def test_the_history_says_so(user_browser: Client) -> None:
    user = await user_of(user_browser)
    await make_prediction(user, "goldfish", model_weights="imagenet")
    assert NOTICE not in (await user_browser.get("/history")).text
    await make_prediction(user, "tabby cat", model_weights="random")
    assert NOTICE in (await user_browser.get("/history")).text
    assert NOTICE in (await user_browser.get("/history", headers=HX)).text


async def test_a_collection_page_and_its_csv_say_so(user_browser: Client, app: Litestar, redis: Redis) -> None:
    user = await user_of(user_browser)
    real = await Collection.create(user=user, name="real", total=1)
    fake = await Collection.create(user=user, name="fake", total=1)
    await make_prediction(user, "goldfish", model_weights="imagenet", collection=real, file_name="a.jpg")
    await make_prediction(user, "tabby cat", model_weights="random", collection=fake, file_name="b.jpg")
    assert NOTICE not in (await user_browser.get(f"/collections/{real.id}")).text
    assert NOTICE in (await user_browser.get(f"/collections/{fake.id}")).text
    assert NOTICE in (await user_browser.get(f"/collections/{fake.id}", headers=HX)).text
    # While an archive is read its page is not reloaded whole: the notice is there from the start.
    # Another process's: the app's feeder, taking it, found no archive and ended it, and the page had no notice.
    reading = await read_elsewhere(redis, user=user, name="zip", total=0)
    try:
        await app.state.services.feeder._take_over_reading()  # a feeder round meanwhile: it leaves it alone
        assert NOTICE in (await user_browser.get(f"/collections/{reading.id}")).text
    finally:
        await Collection.filter(id=reading.id).update(status=CollectionStatus.DONE)
        await redis.delete(keys.reading_lock(str(reading.id)))
    for collection, trained in ((real, "true"), (fake, "false")):
        response = await user_browser.get(f"/collections/{collection.id}/results.csv")
        rows = list(csv.DictReader(io.StringIO(response.text)))
        assert [r["model_trained"] for r in rows] == [trained]


async def test_the_admin_page_and_the_feedback_csv_say_so(admin_browser: Client) -> None:
    # The tests run with MODEL_WEIGHTS=random: the admin page says so at the top.
    assert NOTICE in (await admin_browser.get("/admin")).text
    user = await User.create(email=unique_email(), password_hash="x")
    trained, untrained = await trained_and_untrained(user)
    await Feedback.create(prediction=trained, user=user, is_correct=True)
    await Feedback.create(prediction=untrained, user=user, is_correct=True)
    rows = (await admin_browser.get("/admin/feedback", headers=HX)).text
    untrained_row = rows[rows.index(f'href="/predictions/{untrained.id}"') :].split("</tr>")[0]
    trained_row = rows[rows.index(f'href="/predictions/{trained.id}"') :].split("</tr>")[0]
    assert '<span class="badge">untrained</span>' in untrained_row
    assert "untrained" not in trained_row
    exported = csv.DictReader(io.StringIO((await admin_browser.get("/admin/feedback.csv")).text))
    by_sha = {r["image_sha256"]: r["model_trained"] for r in exported}
    assert by_sha[trained.image_sha256] == "true" and by_sha[untrained.image_sha256] == "false"
