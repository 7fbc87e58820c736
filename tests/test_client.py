"""`imgclass classify DIR` (app/client.py): installed as a command, a folder classified in chunks with a
progress bar, resumed after Ctrl-C without making new collections, and its exit statuses."""

from __future__ import annotations

import ast
import csv
import email.parser
import email.policy
import hashlib
import importlib.metadata
import io
import json
import re
import subprocess
import sys
import tomllib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app import client
from app.client import main
from tests import samples

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where the client keeps what it sent (platformdirs' user cache dir): the test's own."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "imgclass"


@pytest.fixture(scope="module")
def credentials(live_url: str) -> list[str]:
    body = {"email": "cli@example.com", "password": "correct horse"}
    assert httpx.post(f"{live_url}/api/auth/register", json=body).status_code == 201
    return ["--url", live_url, "--email", body["email"], "--password", body["password"]]


def read_rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


# ---- against the real service --------------------------------------------------------------------------


def test_classify_a_folder_then_resume(
    tmp_path: Path, credentials: list[str], capsys: pytest.CaptureFixture[str], cache_dir: Path
) -> None:
    folder = tmp_path / "photos"
    (folder / "2025" / "summer").mkdir(parents=True)
    for i in range(20):
        (folder / "2025" / f"p{i:02}.jpg").write_bytes(samples.photo(9000 + i))
    (folder / "2025" / "IMG_0001.HEIC").write_bytes(samples.photo(9050, fmt="HEIF"))
    (folder / "2025" / "summer" / "copy.jpg").write_bytes(samples.photo(9000))
    (folder / "2025" / "summer" / "broken.png").write_bytes(b"\x89PNG not really")
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.jpg").write_bytes(samples.photo(9999))
    out = tmp_path / "results.csv"

    # One image failed: exit status 1, and the CSV says which and why.
    assert main(["classify", str(folder), "--out", str(out), "--chunk", "7", *credentials]) == 1
    rows = read_rows(out)
    assert len(rows) == 23
    by_name = {row["file_name"]: row for row in rows}
    assert by_name["2025/summer/broken.png"]["status"] == "failed" and by_name["2025/summer/broken.png"]["error"]
    assert by_name["2025/summer/copy.jpg"]["label"] == by_name["2025/p00.jpg"]["label"]
    assert all(row["status"] == "done" for name, row in by_name.items() if name != "2025/summer/broken.png")
    err = capsys.readouterr().err
    assert "23 images, 0 already classified, 0 sent before and resumed, 23 to send" in err
    assert "uploading" in err and "classifying" in err and "23/23" in err  # the progress bars, at their end
    assert not list(cache_dir.glob("*.json"))  # all done: nothing left to resume

    for i in range(20, 25):
        (folder / f"new{i}.jpg").write_bytes(samples.photo(9000 + i))
    assert main(["classify", str(folder), "--out", str(out), *credentials]) == 1
    assert "28 images, 23 already classified, 0 sent before and resumed, 5 to send" in capsys.readouterr().err
    assert len(read_rows(out)) == 28


def test_a_folder_of_good_images_exits_0(tmp_path: Path, credentials: list[str]) -> None:
    folder = tmp_path / "good"
    folder.mkdir()
    for i in range(3):
        (folder / f"g{i}.png").write_bytes(samples.photo(9200 + i, fmt="PNG"))
    (folder / "phone.avif").write_bytes(samples.photo(9203, fmt="AVIF"))
    out = tmp_path / "good.csv"
    assert main(["classify", str(folder), "--out", str(out), *credentials]) == 0
    assert [row["status"] for row in read_rows(out)] == ["done"] * 4


def test_usage_and_sign_in_errors_exit_2(
    tmp_path: Path, live_url: str, credentials: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a.jpg").write_bytes(samples.photo(9300))
    assert main(["classify", str(tmp_path), "--url", live_url, "--token", "nope"]) == 2
    assert "401" in capsys.readouterr().err
    wrong = [*credentials[:-1], "not the password"]
    assert main(["classify", str(tmp_path), *wrong]) == 2
    assert "401" in capsys.readouterr().err
    assert main(["classify", str(tmp_path), "--url", live_url]) == 2  # no credentials (and no terminal to ask)
    assert "give --token" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["classify", str(tmp_path / "missing"), "--url", live_url])
    assert exited.value.code == 2  # a usage error, as argparse reports one
    assert f"error: {tmp_path / 'missing'} is not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["classify"])
    assert exited.value.code == 2


def test_an_unreachable_service_exits_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.jpg").write_bytes(samples.photo(9301))
    assert main(["classify", str(tmp_path), "--url", "http://127.0.0.1:9", "--token", "t"]) == 3
    assert "error:" in capsys.readouterr().err


# ---- Ctrl-C and resuming, against a stand-in for the service --------------------------------------------


class FakeService:
    """The routes the client uses, with collections that are classified once `working` (each by its second
    look), and a Ctrl-C on demand."""

    def __init__(self) -> None:
        self.collections: dict[str, list[str]] = {}
        self.working = False
        self.looks: Counter[str] = Counter()
        self.created = 0
        self.requests: list[str] = []
        self.interrupt_at = ""  # a request and its count ("POST /api/collections #2") to stop at

    def finished(self, collection_id: str) -> bool:
        return self.working and self.looks[collection_id] >= 2

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        seen = f"{request.method} {path}"
        self.requests.append(seen)
        if self.interrupt_at == f"{seen} #{self.requests.count(seen)}":
            raise KeyboardInterrupt
        if path == "/api/users/me":
            return httpx.Response(200, json={"id": 7})
        if path == "/api/predictions/lookup":
            done = {h for c, hashes in self.collections.items() if self.finished(c) for h in hashes}
            asked = json.loads(request.content)["sha256"]
            return httpx.Response(200, json={"found": {h: self.result(h) for h in asked if h in done}})
        if seen == "POST /api/collections":
            self.created += 1
            collection_id = f"c{self.created}"
            self.collections[collection_id] = [hashlib.sha256(data).hexdigest() for data in uploaded(request)]
            return httpx.Response(202, json={"id": collection_id})
        collection_id = path.rpartition("/")[2]
        if collection_id not in self.collections:
            return httpx.Response(404, json={"status_code": 404, "detail": "Not found"})
        if self.working:
            self.looks[collection_id] += 1
        total = len(self.collections[collection_id])
        finished = total if self.finished(collection_id) else 0
        progress = {"total": total, "done": finished, "failed": 0, "queued": total - finished}
        status = "done" if finished else "classifying"
        return httpx.Response(200, json={"status": status, "progress": progress})

    @staticmethod
    def result(sha256: str) -> dict[str, Any]:
        top5 = [{"label": "tabby cat", "score": 0.9}]
        return {
            "image_sha256": sha256,
            "label": "tabby cat",
            "wnid": "n02123045",
            "score": 0.9,
            "top5": top5,
            "status": "done",
            "error": None,
            "model": {"trained": True},
        }


def uploaded(request: httpx.Request) -> Iterator[bytes]:
    """The files of a multipart request."""
    head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + request.content)
    for part in message.iter_parts():
        if part.get_param("name", header="content-disposition") == "files":
            data = part.get_payload(decode=True)
            assert isinstance(data, bytes)
            yield data


def test_ctrl_c_stops_cleanly_and_a_rerun_resumes_the_same_collections(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cache_dir: Path
) -> None:
    folder = tmp_path / "trip"
    folder.mkdir()
    for i in range(5):
        (folder / f"p{i}.jpg").write_bytes(samples.photo(9400 + i))
    out = tmp_path / "trip.csv"
    service = FakeService()
    command = ["classify", str(folder), "--out", str(out), "--chunk", "2", "--token", "t", "--url", "http://svc"]

    service.interrupt_at = "POST /api/collections #2"  # Ctrl-C while uploading the second chunk
    assert main(command, httpx.MockTransport(service)) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "to resume" in err
    assert f"imgclass classify {folder} --url http://svc --out {out}" in err
    assert list(service.collections) == ["c1"]

    service.interrupt_at = "GET /api/collections/c1 #2"  # Ctrl-C while waiting for the results
    assert main(command, httpx.MockTransport(service)) == 130
    assert "5 images, 0 already classified, 2 sent before and resumed, 3 to send" in capsys.readouterr().err
    assert list(service.collections) == ["c1", "c2", "c3"]  # the first one resumed, not sent again

    service.interrupt_at, service.working = "", True
    del service.collections["c2"]  # gone from the service (deleted): its images are sent again
    assert main(command, httpx.MockTransport(service)) == 0
    assert "5 images, 0 already classified, 3 sent before and resumed, 2 to send" in capsys.readouterr().err
    assert list(service.collections) == ["c1", "c3", "c4"]
    assert [row["file_name"] for row in read_rows(out)] == [f"p{i}.jpg" for i in range(5)]
    assert not list(cache_dir.glob("*.json"))  # done: nothing left to resume

    # Everything classified: a rerun sends nothing and makes no collection.
    assert main(command, httpx.MockTransport(service)) == 0
    assert "5 images, 5 already classified, 0 sent before and resumed, 0 to send" in capsys.readouterr().err
    assert len(service.collections) == 3


# ---- installed as a command ----------------------------------------------------------------------------


def test_pip_install_gives_an_imgclass_command_with_what_it_needs() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["imgclass"] == "app.client:main"
    # Whatever app/client.py imports beyond the standard library and the package is a main dependency.
    tree = ast.parse(Path(client.__file__).read_text())
    modules = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    modules |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    outside = {name.split(".")[0] for name in modules} - set(sys.stdlib_module_names) - {"app", "__future__"}
    distributions = importlib.metadata.packages_distributions()
    needed = {distributions[name][0].lower() for name in outside}
    declared = {re.split(r"[<>=!~\[ ;]", requirement)[0].lower() for requirement in project["dependencies"]}
    assert needed == {"httpx", "rich", "platformdirs"} and needed <= declared


def test_help_has_examples_and_the_exit_statuses() -> None:
    command = Path(sys.executable).parent / "imgclass"  # what `pip install .` put beside python
    for argv in ([str(command), "--help"], [str(command), "classify", "--help"]):
        result = subprocess.run(argv, capture_output=True, text=True, check=True)
        assert "examples:" in result.stdout and "imgclass classify ~/Pictures/trip" in result.stdout
        assert "130  interrupted (Ctrl-C)" in result.stdout
