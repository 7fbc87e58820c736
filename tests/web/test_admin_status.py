"""The admin page's figures: throughput has one definition, the predictions finished in the last minute,
and agrees with their count (the workers' own rate is their speed when busy, and says so); feedback rows
show the image judged."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta

from redis.asyncio import Redis

from app.jobs.protocol import Heartbeat
from app.models import Feedback, Prediction, Status, User
from app.settings import Settings
from app.web.pages.admin import RECENT
from tests.helpers import beat, forget_worker, unique_email
from tests.page_helpers import HX, Client, make_prediction, stored_original


def figure(page: str, dd_id: str) -> float:
    found = re.search(rf'<dd id="{dd_id}">([\d.]+)', page)
    assert found, f"no {dd_id} on the page"
    return float(found.group(1))


async def test_throughput_and_the_count_of_finished_predictions_agree(
    admin_browser: Client, no_worker: None, redis: Redis, settings: Settings
) -> None:
    # A worker that was busy a while ago: its recent batches ran at 50 images/s, and it has been idle since.
    idle = Heartbeat(
        name="idle-fast", model_id=settings.model_id, started_at=time.time(), images=5000, images_per_second=50
    )
    await beat(redis, idle, ttl=30)
    try:
        started = datetime.now(UTC)
        user = await User.create(email=unique_email(), password_hash="x")
        now = datetime.now(UTC)
        for _ in range(9):
            await make_prediction(user, finished_at=now)
        await make_prediction(user, finished_at=now, cached=True)  # answered from the cache: finished too
        await make_prediction(user, status=Status.FAILED, finished_at=now)  # failed: finished too
        await make_prediction(user, finished_at=now - timedelta(minutes=5))  # before the last minute
        await make_prediction(user, status=Status.QUEUED, enqueued_at=now)  # not finished (on a stream: not fed)
        page = (await admin_browser.get("/admin/status", headers=HX)).text
        ended = datetime.now(UTC)
    finally:
        await forget_worker(redis, idle.name)
    finished = figure(page, "finished-recently")
    # The page counts everyone's: ours (11), and at least every other prediction that finished before this
    # test began and is still within the minute however late the page looked. (A count read before ours were
    # made is no baseline: its oldest may have left the minute by the time the page is read again.)
    others = (
        await Prediction.filter(
            finished_at__gte=ended - RECENT, finished_at__lte=started, status__in=[Status.DONE, Status.FAILED]
        )
        .exclude(user=user)
        .count()
    )
    assert finished >= 11 + others
    assert figure(page, "throughput") == round(finished / 60, 2)  # one definition, over the same minute
    assert "<dt>Throughput, last 60 s</dt>" in page and "<dt>Finished, last 60 s</dt>" in page
    # The worker's 50 images/s is its speed when busy, shown as such, and not as the throughput.
    assert '<th scope="col" class="num">Speed when busy</th>' in page
    assert "50.0 <small>images/s</small>" in page and figure(page, "throughput") != 50.0


async def test_feedback_rows_show_the_image_judged(admin_browser: Client, settings: Settings) -> None:
    user = await User.create(email=unique_email(), password_hash="x")
    # A label of its own: test_pages.py counts the feedback on goldfish and tench.
    kept = await make_prediction(user, "axolotl", **stored_original(settings.upload_dir))
    pruned = await make_prediction(user, "axolotl", image_path="")  # its original pruned since
    for prediction in (kept, pruned):
        await Feedback.create(prediction=prediction, user=user, is_correct=False, correct_label="eft")
    for path in ("/admin", "/admin/feedback?label=axolotl"):
        page = (await admin_browser.get(path)).text
        at = page.index(f'href="/predictions/{kept.id}"')
        kept_row = page[:at].rsplit("<tr>", 1)[-1] + page[at:].split("</tr>", 1)[0]
        assert f'<img src="/predictions/{kept.id}/image" alt="" width="48" height="48" loading="lazy">' in kept_row
        assert f'src="/predictions/{pruned.id}/image"' not in page  # nothing to show: a placeholder instead
    assert '<span class="thumb-missing" aria-hidden="true"></span>' in page


async def test_admin_lists_past_their_last_page_say_so(admin_browser: Client) -> None:
    """Found in review: the admin's feedback list past its last page said "No feedback yet." (with a filter
    that matches, "No feedback matches these filters."), both false, and the users list showed an empty
    table; they say there is nothing on that page and link to the first, as the history does."""
    user = await User.create(email=unique_email(), password_hash="x")
    await Feedback.create(prediction=await make_prediction(user, "axolotl"), user=user, is_correct=False)
    for path, first in (
        ("/admin/feedback?page=999999", 'href="/admin/feedback"'),
        ("/admin/feedback?label=axolotl&wrong_only=true&page=999999", 'href="/admin/feedback?'),
        ("/admin/users?page=999999", 'href="/admin/users"'),
    ):
        for headers in ({}, HX):
            page = await admin_browser.get(path, headers=headers)
            assert page.status_code == 200, path
            assert "No feedback" not in page.text and "<tbody>" not in page.text, path
            assert "There is nothing on page 999999." in page.text and first in page.text, path


async def test_workers_of_another_model_are_listed_apart_and_not_counted(
    admin_browser: Client, no_worker: None, redis: Redis, settings: Settings
) -> None:
    """Found in review: the status counted a worker of another model as one of this app's, and told nothing of
    it: its jobs never go there, so with only such a worker nothing is classified, yet the page showed 1."""
    other = Heartbeat(name="other-model-worker", model_id="another-model", started_at=time.time())
    await beat(redis, other, ttl=30)
    try:
        page = (await admin_browser.get("/admin/status", headers=HX)).text
    finally:
        await forget_worker(redis, other.name)
    assert "<dt>Workers</dt><dd>0 <small>and 1 of another model</small></dd>" in page
    row = re.search(r"<td>other-model-worker</td>\s*<td>(.*?)</td>", page, flags=re.S)
    assert row and row.group(1).startswith("another-model") and "jobs do not go to it" in row.group(1)
    assert f"No worker of this app's model, {settings.model_id}, is running." in page
