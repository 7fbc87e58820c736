"""Zip reading limits and the CSV of a collection, without a server."""

from __future__ import annotations

import csv
import io

import pytest

from app.archives import CollectionRejected, read_zip
from app.exports import RESULT_CSV_COLUMNS, to_csv
from tests import samples


def test_csv_neutralises_formulas_in_file_names() -> None:
    result = {
        "file_name": "=HYPERLINK(evil).jpg",
        "image_sha256": "a" * 64,
        "label": "tabby",
        "wnid": "n02123045",
        "score": 0.5,
        "top5": [{"label": "tabby", "score": 0.5}],
        "status": "done",
        "error": None,
    }
    rows = list(csv.reader(io.StringIO(to_csv([result]))))
    assert rows[0] == RESULT_CSV_COLUMNS
    assert rows[1][0] == "'=HYPERLINK(evil).jpg" and rows[1][5] == "tabby:0.5" and rows[1][7] == ""


def test_zip_names_are_labels_and_junk_is_skipped() -> None:
    uploads = read_zip(samples.zipped({"a/b.jpg": b"1", "__MACOSX/a/._b.jpg": b"2", "a/.x.jpg": b"3"}), 10, 10_000)
    assert [(u.name, u.data) for u in uploads] == [("a/b.jpg", b"1")]


@pytest.mark.parametrize("name", ["/abs.jpg", "../up.jpg", "a/../../up.jpg", "..\\\\win.jpg", "C:/x.jpg"])
def test_unsafe_zip_paths_are_refused(name: str) -> None:
    with pytest.raises(CollectionRejected, match="unsafe"):
        read_zip(samples.zipped({name: b"x"}), 10, 10_000)
