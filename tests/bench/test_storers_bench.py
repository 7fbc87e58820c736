"""bench/storers.py on a small SQLite database: it fills it, prints the plan through the partial index and
the count of the people storing something."""

from __future__ import annotations

import re
from pathlib import Path

from tests.bench import run_bench


def test_the_bench_fills_a_database_and_counts_who_stores(tmp_path: Path) -> None:
    # 20 people, predictions i = 1..500 of person 1 + i % 20, every tenth pruned: persons 1 and 11 (i % 10 == 0)
    # keep no original; persons 10 and 20 read a collection (one in ten). So 18 store something.
    url = f"sqlite://{tmp_path / 'bench.sqlite3'}"
    args = [url, "--predictions", "500", "--people", "20", "--pruned", "0.1", "--runs", "2"]
    printed = run_bench("storers.py", *args)
    assert "filled in" in printed
    assert "USING INDEX predictions_storing" in printed, printed
    found = re.search(r"^storers: (\d+); median [\d.]+ ms over 2", printed, re.MULTILINE)
    assert found, printed
    assert int(found.group(1)) == 18
