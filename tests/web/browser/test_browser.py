"""End to end in headless Chromium: sign up, log in, classify, give feedback, find it in the history, use the
admin page; classify many images as a collection and follow it; and both with JavaScript off. Each page's
screenshot goes to docs/screenshots/."""

from __future__ import annotations

import csv
import io
import re
import signal
from asyncio.subprocess import Process
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from PIL import Image, ImageDraw
from playwright.async_api import Browser, BrowserContext, FilePayload, Page, ViewportSize, expect

from app import labels
from app.settings import Settings
from tests.helpers import unique_email

pytestmark = pytest.mark.e2e

PASSWORD = "correct horse battery"
DESKTOP = ViewportSize(width=1280, height=860)
PHONE = ViewportSize(width=390, height=844)
LABEL_NAMES = {label.name for label in labels.LABELS}


def scenery(seed: int, size: tuple[int, int] = (640, 480)) -> bytes:
    """A small landscape (sky, sun, hills), distinct per seed: something pleasant to show in screenshots."""
    width, height = size
    image = Image.new("RGB", size)
    draw = ImageDraw.Draw(image)
    for y in range(height):
        t = y / height
        draw.line([(0, y), (width, y)], fill=(int(70 + 120 * t), int(130 + 80 * t), int(220 - 40 * t)))
    sun_x = 120 + (seed * 97) % (width - 240)
    draw.ellipse([sun_x, 60, sun_x + 90, 150], fill=(255, 214, 102))
    draw.polygon(
        [(0, height), (0, 300), (220, 250 + seed % 40), (460, 320), (width, 260), (width, height)], fill=(56, 142, 60)
    )
    draw.polygon([(0, height), (0, 380), (300, 330), (width, 400), (width, height)], fill=(35, 105, 45))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


async def new_page(browser: Browser, base_url: str, **options: object) -> AsyncIterator[Page]:
    """A page in a fresh context (its own cookies) that fails the test on any uncaught script error or
    anything the Content Security Policy blocked."""
    context: BrowserContext = await browser.new_context(base_url=base_url, viewport=DESKTOP, **options)  # type: ignore[arg-type]
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on(
        "console",
        lambda message: errors.append(message.text) if "Content Security Policy" in message.text else None,
    )
    try:
        yield page
    finally:
        await context.close()
    assert not errors, f"script errors: {errors}"


@pytest.fixture
async def page(browser: Browser, live_url: str) -> AsyncIterator[Page]:
    async for opened in new_page(browser, live_url):
        yield opened


async def images_loaded(page: Page) -> None:
    await page.wait_for_function(
        "() => [...document.images].every(i => !i.getAttribute('src') || (i.complete && i.naturalWidth > 0))"
    )


async def shoot(page: Page, folder: Path, name: str) -> None:
    await images_loaded(page)
    await page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


async def log_in(page: Page, email: str, password: str, then: str = "/") -> None:
    await page.goto(f"/login?next={then}")
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Log in").click()
    await page.wait_for_url(f"**{then}")


async def classify(page: Page, data: bytes, name: str) -> str:
    """Choose a file, classify it in place, and return the predicted label."""
    await page.locator("#file").set_input_files({"name": name, "mimeType": "image/jpeg", "buffer": data})
    await expect(page.locator("#preview")).to_be_visible()
    await page.get_by_role("button", name="Classify").click()
    heading = page.locator("#result h2")
    await expect(heading).not_to_have_text(re.compile("Classifying"), timeout=30_000)
    return (await heading.inner_text()).strip()


async def test_sign_up_classify_give_feedback_and_find_it_in_the_history(
    browser: Browser, page: Page, live_url: str, worker_process: Process, screenshots: Path
) -> None:
    email = unique_email()

    # Sign up: an inline error first, then an account, signed in at once.
    await page.goto("/register")
    await expect(page.get_by_role("heading", name="Create an account")).to_be_visible()
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Name").fill("Ada Lovelace")
    await page.get_by_label("Password").fill("short")
    await page.get_by_role("button", name="Sign up").click()
    await expect(page.locator("#password-error")).to_contain_text("8 to 128 characters")
    await expect(page.get_by_label("Email")).to_have_value(email)
    await shoot(page, screenshots, "register")
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign up").click()
    await page.wait_for_url(f"{live_url}/")
    await expect(page.get_by_text("Ada Lovelace")).to_be_visible()

    # Log out and back in (a wrong password is reported next to the field).
    await page.get_by_role("button", name="Log out").click()
    await page.wait_for_url("**/login")
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill("not my password")
    await page.get_by_role("button", name="Log in").click()
    await expect(page.locator("#password-error")).to_have_text("Wrong email or password")
    await shoot(page, screenshots, "login")
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Log in").click()
    await page.wait_for_url(f"{live_url}/")
    await shoot(page, screenshots, "classify-empty")

    # Classify: preview, progress, then the result in place without a reload.
    marker = await page.evaluate("() => (window.__same_document = true)")
    label = await classify(page, scenery(1), "meadow.jpg")
    assert marker and await page.evaluate("() => window.__same_document === true"), "the page reloaded"
    assert label in LABEL_NAMES
    await expect(page.locator(".top5 li")).to_have_count(5)
    await expect(page.get_by_text("Untrained model.")).to_be_visible()
    await expect(page.locator(".facts")).to_contain_text("resnet50")
    assert await page.locator("#upload-progress").evaluate("p => p.value") == 100
    await expect(page.locator("#result h2")).to_be_focused()  # keyboard and screen-reader users land on it
    await shoot(page, screenshots, "classify")

    # Feedback: wrong, the right class found with the search box, a comment; then edited.
    await page.get_by_label("No, wrong").check()
    search = page.get_by_label("If wrong, the right class")
    await search.fill("golden retr")
    await expect(page.locator("#label-options option[value='Golden Retriever']")).to_have_count(1)
    await search.fill("Golden Retriever")
    await page.get_by_label("Comment").fill("It is our dog in a field")
    await page.get_by_role("button", name="Save feedback").click()
    await expect(page.get_by_text("your feedback is saved")).to_be_visible()
    await expect(page.locator(".given")).to_contain_text("Golden Retriever")
    await page.get_by_label("Yes, correct").check()
    await expect(search).to_be_hidden()  # only a wrong answer needs the right class
    await page.get_by_label("No, wrong").check()
    await page.get_by_label("Comment").fill("Our dog, Rex, in a field")
    await page.get_by_role("button", name="Update feedback").click()
    await expect(page.locator(".given")).to_contain_text("Rex")

    # A rejected file is explained in the page.
    await page.locator("#file").set_input_files({"name": "notes.jpg", "mimeType": "image/jpeg", "buffer": b"text"})
    await page.get_by_role("button", name="Classify").click()
    await expect(page.locator("#result")).to_contain_text("Could not classify this image")
    await expect(page.locator("#result")).to_contain_text("JPEG, PNG, WebP, GIF, BMP, HEIC or AVIF")

    # Drag and drop a second image onto the drop zone.
    await drop_file(page, scenery(2), "hills.jpg")
    await expect(page.locator("#preview")).to_be_visible()
    await page.get_by_role("button", name="Classify").click()
    await expect(page.locator("#result figcaption")).to_have_text("hills.jpg", timeout=30_000)

    # History: newest first, with thumbnails, labels, scores and feedback; then one prediction's page.
    await page.get_by_role("link", name="History").click()
    await page.wait_for_url("**/history")
    items = page.locator(".history-item")
    await expect(items).to_have_count(2)
    await expect(items.first).to_contain_text("hills.jpg")
    await expect(items.nth(1)).to_contain_text(label)
    await expect(items.nth(1)).to_contain_text("Wrong: Golden Retriever")
    await shoot(page, screenshots, "history")
    await items.nth(1).click()
    await page.wait_for_url("**/predictions/*")
    await expect(page.locator(".given")).to_contain_text("Rex")
    await expect(page.get_by_label("If wrong, the right class")).to_have_value("Golden Retriever")
    await shoot(page, screenshots, "prediction")

    # The same page on a phone.
    phone = await browser.new_context(base_url=live_url, viewport=PHONE, device_scale_factor=2, is_mobile=True)
    try:
        await phone.add_cookies(
            [{"name": c["name"], "value": c["value"], "url": live_url} for c in await page.context.cookies()]
        )
        small = await phone.new_page()
        await small.goto("/")
        assert await small.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
        await classify(small, scenery(3), "phone.jpg")
        assert await small.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
        await shoot(small, screenshots, "classify-phone")
    finally:
        await phone.close()


async def drop_file(page: Page, data: bytes, name: str) -> None:
    """What a drop from the desktop does: a DataTransfer holding the file, dropped on the zone."""
    await page.evaluate(
        """async ([bytes, name]) => {
            const transfer = new DataTransfer();
            transfer.items.add(new File([new Uint8Array(bytes)], name, {type: "image/jpeg"}));
            const zone = document.querySelector("[data-dropzone]");
            zone.dispatchEvent(new DragEvent("dragover", {dataTransfer: transfer, bubbles: true, cancelable: true}));
            zone.dispatchEvent(new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
        }""",
        [list(data), name],
    )


async def test_admin_page(
    page: Page, live_url: str, worker_process: Process, screenshots: Path, settings: Settings, tmp_path: Path
) -> None:
    await log_in(page, settings.admin_email, settings.admin_password)
    label = await classify(page, scenery(4), "admin-upload.jpg")
    await page.get_by_label("No, wrong").check()
    await page.get_by_label("If wrong, the right class").fill("tench")
    await page.get_by_role("button", name="Save feedback").click()
    await expect(page.get_by_text("your feedback is saved")).to_be_visible()

    await page.get_by_role("link", name="Admin").click()
    await page.wait_for_url("**/admin")
    status = page.locator("#status")
    await expect(status).to_contain_text("e2e-worker")
    # The status refreshes itself: a fresh copy arrives without any action.
    async with page.expect_response(f"{live_url}/admin/status", timeout=10_000):
        pass
    await expect(page.locator("#agreement")).to_contain_text(label)
    await expect(page.locator("#users tbody tr").first).to_be_visible()
    await page.wait_for_load_state("networkidle")
    await shoot(page, screenshots, "admin")

    # Filters swap the list in place and keep the address bar in step.
    await page.get_by_label("Wrong only").check()
    await page.wait_for_url("**/admin/feedback?wrong_only=true*")
    await page.get_by_label("Predicted label").select_option(label)
    await page.wait_for_url(f"**/admin/feedback?wrong_only=true&label={label.replace(' ', '+')}")
    rows = page.locator("#admin-feedback tbody tr")
    await expect(rows.filter(has_text=settings.admin_email)).to_have_count(1)
    await expect(rows.filter(has_text="Correct")).to_have_count(0)
    await expect(rows.filter(has_text=settings.admin_email)).to_contain_text("tench")

    # The CSV export, with the same filters.
    async with page.expect_download() as downloading:
        await page.get_by_role("link", name="Export CSV").click()
    download = await downloading.value
    saved = tmp_path / download.suggested_filename
    await download.save_as(saved)
    exported = list(csv.DictReader(io.StringIO(saved.read_text())))
    assert {(r["predicted_label"], r["is_correct"]) for r in exported} == {(label, "false")}  # the filters hold
    mine = [r for r in exported if r["user_email"] == settings.admin_email]
    assert [(r["correct_label"], r["correct_wnid"]) for r in mine] == [("tench", "n01440764")]
    assert len(mine[0]["image_sha256"]) == 64


async def test_users_get_a_403_page_for_admin_and_a_404_page_for_nonsense(
    page: Page, live_url: str, screenshots: Path
) -> None:
    await page.goto("/register")
    await page.get_by_label("Email").fill(unique_email())
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign up").click()
    await page.wait_for_url(f"{live_url}/")
    assert await page.get_by_role("link", name="Admin").count() == 0
    response = await page.goto("/admin")
    assert response is not None and response.status == 403
    await expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()
    response = await page.goto("/no/such/page")
    assert response is not None and response.status == 404
    await expect(page.get_by_role("heading", name="Page not found")).to_be_visible()
    await shoot(page, screenshots, "error-404")


async def test_classify_with_javascript_off(browser: Browser, live_url: str, worker_process: Process) -> None:
    async for page in new_page(browser, live_url, java_script_enabled=False):
        await page.goto("/register")
        await page.get_by_label("Email").fill(unique_email())
        await page.get_by_label("Password").fill(PASSWORD)
        await page.get_by_role("button", name="Sign up").click()
        await page.wait_for_url(f"{live_url}/")

        await page.locator("#file").set_input_files(
            {"name": "plain.jpg", "mimeType": "image/jpeg", "buffer": scenery(5)}
        )
        await page.get_by_role("button", name="Classify").click()
        await page.wait_for_load_state()
        label = (await page.locator("#result h2").inner_text()).strip()
        assert label in LABEL_NAMES
        await expect(page.locator(".top5 li")).to_have_count(5)
        await expect(page.locator("#upload-form")).to_be_visible()  # a whole page: the form is there again

        await page.get_by_label("Yes, correct").check()
        await page.get_by_role("button", name="Save feedback").click()
        await page.wait_for_url("**/predictions/*")
        await expect(page.locator(".given")).to_contain_text("Correct")


async def sign_up(page: Page, live_url: str) -> None:
    await page.goto("/register")
    await page.get_by_label("Email").fill(unique_email())
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign up").click()
    await page.wait_for_url(f"{live_url}/")


def chosen_files(count: int, first_seed: int) -> list[FilePayload]:
    """Several landscapes and one file that is not an image, as a person's folder might hold."""
    images = [
        FilePayload(name=f"walk-{i + 1:02}.jpg", mimeType="image/jpeg", buffer=scenery(first_seed + i))
        for i in range(count)
    ]
    return [*images, FilePayload(name="notes.txt", mimeType="text/plain", buffer=b"shopping list")]


async def test_many_images_become_a_collection_followed_live_filtered_and_downloaded(
    browser: Browser, page: Page, live_url: str, worker_process: Process, screenshots: Path, tmp_path: Path
) -> None:
    await sign_up(page, live_url)

    # Choose several files: previews of them, what they are, and a button that says what will happen.
    await page.locator("#file").set_input_files(chosen_files(11, 40))
    await expect(page.locator("#chosen-summary")).to_have_text(re.compile(r"^11 images, 1 other file · [\d.]+ kB"))
    await expect(page.locator("#chosen-thumbs img")).to_have_count(8)
    await expect(page.locator("#chosen-thumbs .more")).to_have_text("+3")
    await expect(page.locator("#preview")).to_be_hidden()
    await shoot(page, screenshots, "classify-many")

    # The worker is paused, so the collection's page is seen while its images wait.
    worker_process.send_signal(signal.SIGSTOP)
    try:
        await page.get_by_role("button", name="Classify all").click()
        await page.wait_for_url("**/collections/*")
        progress = page.locator("#collection-progress")
        await expect(progress).to_contain_text("11 waiting")
        await expect(progress.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "1")  # the text file
        await expect(page.locator("#collection-results")).to_have_attribute("hx-trigger", "every 2s")
        marker = await page.evaluate("() => (window.__same_document = true)")
    finally:
        worker_process.send_signal(signal.SIGCONT)

    # The progress refreshes itself up to the end, then stops asking.
    await expect(progress).to_contain_text("All 12 finished: 1 could not be classified", timeout=60_000)
    assert marker and await page.evaluate("() => window.__same_document === true"), "the page reloaded"
    await expect(progress.get_by_role("progressbar")).to_have_attribute("aria-valuenow", "12")
    await expect(page.locator("#collection-results")).not_to_have_attribute("hx-trigger", re.compile("."))
    rows = page.locator("#collection-results tbody tr")
    await expect(rows).to_have_count(12)
    await expect(rows.filter(has_text="notes.txt")).to_contain_text("Not a supported image")
    await page.mouse.move(0, 0)
    await shoot(page, screenshots, "collection")

    # Filters swap the results in place and keep the address bar in step.
    await page.get_by_label("Status").select_option("failed")
    await page.wait_for_url("**/collections/*?status=failed*")
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_contain_text("notes.txt")
    await page.get_by_label("Status").select_option("done")
    await expect(rows).to_have_count(11)
    label = (await rows.first.locator("td").nth(2).inner_text()).strip()
    assert label in LABEL_NAMES
    await page.get_by_label("Label").fill(label)
    await page.get_by_label("Label").press("Enter")
    await page.wait_for_url(re.compile(r"label=" + re.escape(label.replace(" ", "+"))))
    shown = await rows.count()
    assert 1 <= shown <= 11
    for i in range(shown):
        await expect(rows.nth(i).locator("td").nth(2)).to_have_text(label)

    # The CSV has every image, filters or not.
    async with page.expect_download() as downloading:
        await page.get_by_role("link", name="Download CSV").click()
    download = await downloading.value
    saved = tmp_path / download.suggested_filename
    await download.save_as(saved)
    assert saved.name.startswith("collection-") and saved.suffix == ".csv"
    exported = list(csv.DictReader(io.StringIO(saved.read_text())))
    assert sorted(r["file_name"] for r in exported) == sorted(f.get("name", "") for f in chosen_files(11, 40))
    assert sum(r["label"] == label for r in exported) == shown

    # On a phone the page fits the screen (the table scrolls within itself).
    phone = await browser.new_context(base_url=live_url, viewport=PHONE, device_scale_factor=2, is_mobile=True)
    try:
        await phone.add_cookies(
            [{"name": c["name"], "value": c["value"], "url": live_url} for c in await page.context.cookies()]
        )
        small = await phone.new_page()
        await small.goto(page.url.split("?")[0])
        assert await small.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
        await shoot(small, screenshots, "collection-phone")
    finally:
        await phone.close()

    # The history lists it, and leads back to it.
    await page.get_by_role("link", name="History", exact=True).click()
    await page.wait_for_url("**/history")
    await expect(page.locator(".collection-item")).to_have_count(1)
    await expect(page.locator(".collection-item")).to_contain_text("12 of 12 finished")
    await shoot(page, screenshots, "history-collections")
    await page.locator(".collection-item").click()
    await page.wait_for_url("**/collections/*")


async def test_a_collection_with_javascript_off(browser: Browser, live_url: str, worker_process: Process) -> None:
    async for page in new_page(browser, live_url, java_script_enabled=False):
        await sign_up(page, live_url)
        # The plain form, with the folder input left empty as a browser sends it.
        await page.locator("#file").set_input_files(chosen_files(3, 60))
        await page.get_by_role("button", name="Classify").click()
        await page.wait_for_url("**/collections/*")
        # The page reloads itself while images wait; the filters are a plain GET form.
        await expect(page.locator("#collection-progress")).to_contain_text("All 4 finished", timeout=60_000)
        await page.get_by_label("Status").select_option("failed")
        await page.get_by_role("button", name="Apply").click()
        await page.wait_for_url("**status=failed*")
        await expect(page.locator("#collection-results tbody tr")).to_have_count(1)
