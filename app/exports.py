"""CSV files people download and open in spreadsheets: one row per image of a collection (the API's CSV,
the pages' and the command-line client's), and cells that a spreadsheet must not run as formulas."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from typing import Any

# model_trained: "false" for a model with random weights (its labels are meaningless), last so that readers
# of the older columns by position are unaffected.
RESULT_CSV_COLUMNS = ["file_name", "sha256", "label", "wnid", "score", "top5", "status", "error", "model_trained"]


def spreadsheet_safe(text: str) -> str:
    """Text that a spreadsheet would run as a formula gets a leading apostrophe."""
    return f"'{text}" if text.startswith(("=", "+", "-", "@", "\t", "\r")) else text


def csv_bool(value: bool | None) -> str:
    return "" if value is None else "true" if value else "false"


def model_trained(result: dict[str, Any]) -> bool | None:
    """A result's `model.trained` (or, from an older server, `not untrained`); None when it does not say."""
    model = result.get("model") or {}
    if "trained" in model:
        return bool(model["trained"])
    return None if result.get("untrained") is None else not result["untrained"]


def to_csv(results: Iterable[dict[str, Any]]) -> str:
    """One row per image, from results shaped as `predictions.result_dict` makes them (the API's own)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(RESULT_CSV_COLUMNS)
    for r in results:
        top5 = ";".join(f"{t['label']}:{t['score']}" for t in r.get("top5") or [])
        name = spreadsheet_safe(r["file_name"])  # the client chose it: it may be a formula
        row = [name, r["image_sha256"], r["label"], r["wnid"], r["score"], top5, r["status"], r["error"]]
        writer.writerow(["" if value is None else str(value) for value in row] + [csv_bool(model_trained(r))])
    return out.getvalue()
