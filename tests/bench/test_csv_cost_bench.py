"""bench/csv_cost.py on a small SQLite database: it fills it and prints the CPU of each CSV per 20,000 rows."""

from __future__ import annotations

import re
from pathlib import Path

from tests.bench import run_bench


def test_the_bench_fills_a_database_and_prints_each_csvs_cost(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'bench.sqlite3'}"
    printed = run_bench("csv_cost.py", url, "--rows", "60", "--runs", "2")
    assert "filled in" in printed
    for name in ("results.csv", "feedback.csv"):
        line = rf"^{re.escape(name)}: 60 rows; CPU s per 20,000 rows: min [\d.]+, median [\d.]+ over 2; text \w{{16}}$"
        assert re.search(line, printed, re.MULTILINE), printed
