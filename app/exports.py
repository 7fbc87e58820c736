"""CSV files people download and open in spreadsheets: one row per image of a collection (the API's CSV,
the pages' and the command-line client's), and cells that a spreadsheet must not run as formulas."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Hashable, Iterable, Sequence
from typing import IO, Any

from app.turns import Turns

# Rows a streamed CSV reads from the database at once: each step of the event loop stays short however
# long the file (10,000 rows built in one step held every other request for 0.3 s).
CSV_PAGE = 500
# Pages of the CSVs a web process makes at once, one of them a person's, the others' in turns by person: a page
# costs the event loop about 15 ms. Made all at once, one person's 32 downloads of a 20,000-image collection's CSV
# held the process's loop for 45 s, every other request waiting 0.3 s (median; measured).
EXPORT_STEPS = 2
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


def result_cells(values: Sequence[Any], top5: Iterable[tuple[str, float]], trained: bool | None) -> list[str]:
    """One image's row, in RESULT_CSV_COLUMNS' order, from its file name, sha256, label, wnid, score, status and
    error (`values`), its top5's (label, score) pairs and whether its model was trained: plain values, for a long
    CSV is read as tuples, not objects (app/collections.py result_pages)."""
    file_name, sha256, label, wnid, score, status, error = values
    name = spreadsheet_safe(file_name)  # the client chose it: it may be a formula
    row = [name, sha256, label, wnid, score, ";".join(f"{t}:{s}" for t, s in top5), status, error]
    return ["" if value is None else str(value) for value in row] + [csv_bool(trained)]


def result_row(r: dict[str, Any]) -> list[str]:
    """One image's row, from a result shaped as `predictions.result_dict` makes it (the API's own)."""
    values = (r["file_name"], r["image_sha256"], r["label"], r["wnid"], r["score"], r["status"], r["error"])
    return result_cells(values, ((t["label"], t["score"]) for t in r.get("top5") or []), model_trained(r))


def to_csv(results: Iterable[dict[str, Any]]) -> str:
    """One row per image, from results shaped as `predictions.result_dict` makes them."""
    out = io.StringIO()
    write_csv(results, out)
    return out.getvalue()


def write_csv(results: Iterable[dict[str, Any]], out: IO[str]) -> None:
    """`to_csv`, written to `out` a row at a time (the results may be an iterator of any length)."""
    writer = csv.writer(out)
    writer.writerow(RESULT_CSV_COLUMNS)
    writer.writerows(result_row(r) for r in results)


async def csv_text(
    columns: Sequence[str], pages: AsyncIterator[list[list[str]]], turns: Turns, owner: Hashable
) -> AsyncIterator[str]:
    """A CSV file, a page of rows at a time (for a `Stream`): memory stays flat however long it is. Each page is
    read and written in `owner`'s turn at `turns` (EXPORT_STEPS), not held while the client takes it."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)

    def flush() -> str:
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text

    writer.writerow(columns)
    yield flush()
    while True:
        async with turns.slot(owner):
            rows = await anext(pages, None)
            if rows is None:
                return
            writer.writerows(rows)
            text = flush()
        yield text
