"""Originals stored once by hash, atomically."""

from __future__ import annotations

from pathlib import Path

from app import files, images
from tests import samples
from tests.test_images import MAX_BYTES, MAX_PIXELS


def test_store_once_by_hash_atomically(tmp_path: Path) -> None:
    checked = images.check(samples.photo(6), MAX_BYTES, MAX_PIXELS)
    path = files.store_original(checked.data, checked.relative_path, tmp_path)
    assert path == tmp_path / checked.sha256[:2] / f"{checked.sha256}.jpg"
    assert path.read_bytes() == checked.data
    assert files.store_original(checked.data, checked.relative_path, tmp_path) == path
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp files left behind
