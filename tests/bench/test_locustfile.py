"""locustfile.py drives the real system: its users sign in, upload (a multipart body it builds itself, as
FastHttpUser has no `files=`) and read, with no failure, and bench/run.py reads Locust's figures back."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.run import PREDICT, Load, System, database, run_locust


@pytest.mark.timeout(300)
def test_a_short_saturation_row_classifies_and_fails_nothing(tmp_path: Path) -> None:
    load = Load(1, "saturation", 4, False, "distinct", "stand-in", seconds=3)
    with database(os.environ.get("DATABASE_URL"), tmp_path) as database_url:
        system = System(tmp_path, database_url, 1, pinned=False, backend="stand-in")
        try:
            run_locust(system, load, tmp_path, None)
        finally:
            system.stop()
    assert load.get(PREDICT, "requests") > 0 and load.get("GET /api/users/me", "requests") > 0
    assert load.get("login", "requests") > 0
    assert load.get("Aggregated", "failures") == 0, (tmp_path / "locust.log").read_text()[-3000:]
    assert load.rate > 0  # the worker classified what the users sent, in the measured window
