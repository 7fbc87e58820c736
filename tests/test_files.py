"""Originals stored once by hash, atomically."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path
from typing import Any

import pytest

from app import files, images
from tests import samples
from tests.test_images import MAX_BYTES, MAX_COST, MAX_PIXELS


def test_store_once_by_hash_atomically(tmp_path: Path) -> None:
    checked = images.check(samples.photo(6), MAX_BYTES, MAX_PIXELS, MAX_COST)
    assert files.store_original(checked.data, checked.relative_path, tmp_path)
    path = tmp_path / checked.sha256[:2] / f"{checked.sha256}.jpg"
    assert path.read_bytes() == checked.data
    assert not files.store_original(checked.data, checked.relative_path, tmp_path)  # there already
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp files left behind


def test_an_original_is_forgotten_only_if_not_stored_again_since_it_was_written(tmp_path: Path) -> None:
    """A refused upload removes the original it wrote (app.sandbox.DecodePool.forget), not one another upload
    of the same image stored again meanwhile, even at once: that one's row names it."""
    one, two = tmp_path / "ab" / "one.jpg", tmp_path / "ab" / "two.jpg"
    written = files.store_original(b"a" * 10, "ab/one.jpg", tmp_path)
    assert written is not None and files.forget_original(one, written) == 10 and not one.exists()
    written = files.store_original(b"b" * 10, "ab/two.jpg", tmp_path)
    assert written is not None and files.store_original(b"b" * 10, "ab/two.jpg", tmp_path) is None
    assert files.forget_original(two, written) == 0 and two.read_bytes() == b"b" * 10
    assert files.forget_original(one, written) == 0  # gone already


async def test_disk_usage_walks_the_directory_and_counts_what_is_written(tmp_path: Path) -> None:
    (tmp_path / "ab").mkdir()
    (tmp_path / "ab" / "old.jpg").write_bytes(b"x" * 100)
    (tmp_path / "thumbs" / "ab").mkdir(parents=True)
    (tmp_path / "thumbs" / "ab" / "old.webp").write_bytes(b"y" * 50)
    usage = files.DiskUsage()
    assert not usage.measured and usage.used == 0
    assert await usage.measure(tmp_path) == 150 and usage.measured
    assert files.store_original(b"z" * 30, "cd/new.jpg", tmp_path)
    usage.wrote(30)
    assert usage.used == 180
    assert await usage.measure(tmp_path) == 180  # the walk does not count it twice
    assert await files.DiskUsage().measure(tmp_path / "nothing-yet") == 0


def test_removing_a_file_spares_one_stored_again(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    path.write_bytes(b"x" * 10)
    assert files.remove_file(path, used_since=path.stat().st_mtime) is None and path.exists()
    assert files.remove_file(path, dry_run=True) == 10 and path.exists()
    assert files.remove_file(path, used_since=path.stat().st_mtime + 1) == 10 and not path.exists()
    assert files.remove_file(path) == 0


async def test_the_walk_removes_writes_cut_off_long_ago_and_counts_the_rest(tmp_path: Path) -> None:
    (tmp_path / "ab").mkdir()
    stale, fresh = tmp_path / "ab" / f"{files.PARTIAL_PREFIX}1", tmp_path / "ab" / f"{files.PARTIAL_PREFIX}2"
    stale.write_bytes(b"x" * 100)
    fresh.write_bytes(b"y" * 10)  # a write in progress
    long_ago = time.time() - files.STALE_PARTIAL_S - 60
    os.utime(stale, (long_ago, long_ago))
    assert await files.DiskUsage().measure(tmp_path) == 10
    assert not stale.exists() and fresh.exists()


def test_an_original_is_stored_where_the_file_system_has_no_hard_links(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It is linked into place so that two uploads at once do not both write it; without hard links, renamed."""

    def no_links(*args: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(files.os, "link", no_links)
    files.store_original(b"c" * 10, "ab/three.jpg", tmp_path)
    assert [p.name for p in (tmp_path / "ab").iterdir()] == ["three.jpg"]


@pytest.mark.parametrize("refused", ["first", "second"])
def test_without_hard_links_neither_of_two_uploads_writing_an_original_at_once_forgets_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refused: str
) -> None:
    """Found auditing: renamed into place, an original two uploads found missing at once was written by both, and
    each took it for its own (store_original's time); the one renamed last, refused, forgot it from under the other's
    row. Without hard links neither claims it: a refused one leaves it to the retention run (admin._prune_unnamed)."""

    def no_links(*args: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    data, relative = b"f" * 10, "ab/six.jpg"
    path, replace, second = tmp_path / relative, os.replace, list[int | None]()

    def the_other_writes_first(source: Any, to: Any) -> None:
        if not second and Path(to) == path:
            second.append(None)
            second[0] = files.store_original(data, relative, tmp_path)
        replace(source, to)

    monkeypatch.setattr(files.os, "link", no_links)
    monkeypatch.setattr(files.os, "replace", the_other_writes_first)
    first = files.store_original(data, relative, tmp_path)
    assert second  # both found it missing, and wrote it
    written = first if refused == "first" else second[0]
    if written is not None:  # as DecodePool.forget does
        files.forget_original(path, written)
    assert path.read_bytes() == data


def test_a_retention_run_keeps_an_original_stored_again_as_it_deletes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: remove_file looked at the original's time, then deleted it; an upload storing it again
    just between (touching it, being there) made a row that named a file then gone."""
    files.store_original(b"d" * 10, "ab/four.jpg", tmp_path)
    path, then = tmp_path / "ab" / "four.jpg", time.time() - 3600
    os.utime(path, (then, then))
    unlink, used = Path.unlink, list[int | None]()

    def unlink_after_a_use(self: Path, missing_ok: bool = False) -> None:
        if not used:
            used.append(files.store_original(b"d" * 10, "ab/four.jpg", tmp_path))
        unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink_after_a_use)
    files.remove_file(path, used_since=time.time() - 600)
    monkeypatch.undo()
    assert used and path.read_bytes() == b"d" * 10


@pytest.mark.parametrize("removal", ["refused upload", "retention run"])
def test_an_original_put_back_as_kept_is_not_left_to_an_upload_that_wrote_it_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, removal: str
) -> None:
    """An upload stores an original again (its row names it) as a removal (a refused upload's that wrote it, or a
    retention run's) sets it aside; found used, it is put back. A third upload, storing it just between, found it
    missing and wrote it: the file put back was dropped for that one, which took it for its own and, refused
    (a full Redis refused all but an async upload), forgot it: the row of the upload that stored it named a file
    gone."""
    data, relative = b"e" * 10, "ab/five.jpg"
    path = tmp_path / relative
    written = files.store_original(data, relative, tmp_path)
    assert written is not None and files.store_original(data, relative, tmp_path) is None  # the one whose row names it
    stat, third = os.stat, list[int | None]()

    def stored_just_as_set_aside(at: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if not third and Path(at).name.startswith(f"{files.PARTIAL_PREFIX}{path.name}-"):  # set aside, looked at
            third.append(None)
            third[0] = files.store_original(data, relative, tmp_path)
        return stat(at, *args, **kwargs)

    monkeypatch.setattr(files.os, "stat", stored_just_as_set_aside)
    if removal == "refused upload":
        assert files.forget_original(path, written) == 0
    else:
        assert files.remove_file(path, used_since=time.time() - 600) is None
    monkeypatch.undo()
    assert third and third[0] is not None  # it found the original missing, and wrote it
    files.forget_original(path, third[0])  # refused
    assert path.read_bytes() == data
