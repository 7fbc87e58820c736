"""`python -m app.client classify DIR`: a folder classified in chunks, resumed without resending."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import httpx
import pytest

from app.client import main
from tests import samples


@pytest.fixture(scope="module")
def credentials(live_url: str) -> list[str]:
    body = {"email": "cli@example.com", "password": "correct horse"}
    assert httpx.post(f"{live_url}/api/auth/register", json=body).status_code == 201
    return ["--url", live_url, "--email", body["email"], "--password", body["password"]]


def read_rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def test_classify_a_folder_then_resume(
    tmp_path: Path, credentials: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "photos"
    (folder / "2025" / "summer").mkdir(parents=True)
    for i in range(20):
        (folder / "2025" / f"p{i:02}.jpg").write_bytes(samples.photo(9000 + i))
    (folder / "2025" / "summer" / "copy.jpg").write_bytes(samples.photo(9000))
    (folder / "2025" / "summer" / "broken.png").write_bytes(b"\x89PNG not really")
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.jpg").write_bytes(samples.photo(9999))
    out = tmp_path / "results.csv"

    assert main(["classify", str(folder), "--out", str(out), "--chunk", "7", *credentials]) == 0
    rows = read_rows(out)
    assert len(rows) == 22
    by_name = {row["file_name"]: row for row in rows}
    assert by_name["2025/summer/broken.png"]["status"] == "failed" and by_name["2025/summer/broken.png"]["error"]
    assert by_name["2025/summer/copy.jpg"]["label"] == by_name["2025/p00.jpg"]["label"]
    assert all(row["status"] == "done" for name, row in by_name.items() if name != "2025/summer/broken.png")
    assert "22 images, 0 already classified, 22 to send" in capsys.readouterr().err

    for i in range(20, 25):
        (folder / f"new{i}.jpg").write_bytes(samples.photo(9000 + i))
    assert main(["classify", str(folder), "--out", str(out), *credentials]) == 0
    assert "27 images, 22 already classified, 5 to send" in capsys.readouterr().err
    assert len(read_rows(out)) == 27


def test_bad_arguments_fail_clearly(tmp_path: Path, live_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["classify", str(tmp_path), "--url", live_url, "--token", "nope"]) == 1
    assert "error:" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["classify", str(tmp_path / "missing"), "--url", live_url])
    assert exited.value.code == 2  # a usage error, as argparse reports one
    assert f"error: {tmp_path / 'missing'} is not a folder" in capsys.readouterr().err
