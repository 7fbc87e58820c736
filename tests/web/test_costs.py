"""An upload's web-side CPU, by stage, in /metrics (app/stages.py, app/web/costs.py)."""

from __future__ import annotations

import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from app import stages
from tests import samples
from tests.conftest import CountingClassifier
from tests.page_helpers import HX, csrf, upload_page


def stage_totals(text: str) -> dict[str, tuple[float, float]]:
    """(count, sum) of app_web_stage_cpu_seconds by stage."""
    found: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "app_web_stage_cpu_seconds":
            continue
        for sample in family.samples:
            entry = found.setdefault(sample.labels["stage"], [0.0, 0.0])
            if sample.name.endswith("_count"):
                entry[0] = sample.value
            elif sample.name.endswith("_sum"):
                entry[1] = sample.value
    return {name: (count, total) for name, (count, total) in found.items()}


async def test_each_upload_records_every_stage_and_the_decode_pool_counts(
    client: httpx.AsyncClient, auth: dict[str, str], worker: CountingClassifier
) -> None:
    before = stage_totals((await client.get("/metrics")).text)
    for seed in (1500, 1501, 1502):
        response = await client.post("/api/predictions", headers=auth, files={"file": ("a.jpg", samples.photo(seed))})
        assert response.status_code == 200
    await client.get("/api/users/me", headers=auth)  # not an upload: not counted
    after = stage_totals((await client.get("/metrics")).text)
    assert set(after) == set(stages.STAGES)
    for name in stages.STAGES:
        assert after[name][0] - before.get(name, (0.0, 0.0))[0] == 3, name
    spent = {name: after[name][1] - before.get(name, (0.0, 0.0))[1] for name in stages.STAGES}
    # A decode costs real CPU in the pool's process, which the web process's own clock does not see.
    assert spent["decode"] > 0 and spent["hash"] > 0 and spent["database"] > 0


async def test_the_classify_form_is_measured_and_a_collection_is_not(
    client: httpx.AsyncClient, user_browser: httpx.AsyncClient, worker: CountingClassifier
) -> None:
    before = stage_totals((await client.get("/metrics")).text)
    response = await upload_page(user_browser, samples.photo(1503), name="costs.jpg")
    assert response.status_code == 200
    middle = stage_totals((await client.get("/metrics")).text)
    assert middle["decode"][0] - before.get("decode", (0.0, 0.0))[0] == 1
    files = [("files", ("costs-1.jpg", samples.photo(1504))), ("files", ("costs-2.jpg", samples.photo(1505)))]
    response = await user_browser.post("/", files=files, headers={**HX, "X-CSRFToken": await csrf(user_browser)})
    assert response.status_code in (200, 303), response.text
    assert stage_totals((await client.get("/metrics")).text)["decode"][0] == middle["decode"][0]


def test_a_stage_counts_only_its_own_block_and_close_the_rest() -> None:
    costs = stages.begin()
    with stages.stage("database"):
        busy_until = time.process_time() + 0.02  # inside the block: the stage's clock started before
        while time.process_time() < busy_until:
            pass
    stages.elsewhere("decode", 0.5)
    costs.close("parsing")
    assert costs.spent["database"] >= 0.02
    assert costs.spent["parsing"] < 0.01  # the database block is not counted twice
    assert costs.spent["decode"] == 0.5 and costs.outside == 0.5
