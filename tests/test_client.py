"""`imgclass classify DIR` (app/client.py): installed as a command, a folder classified in chunks with a
progress bar, resumed after Ctrl-C without making new collections, and its exit statuses."""

from __future__ import annotations

import ast
import contextlib
import csv
import email.parser
import email.policy
import hashlib
import http.server
import importlib.metadata
import io
import json
import os
import re
import subprocess
import sys
import threading
import tomllib
import tracemalloc
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


@pytest.mark.parametrize("url", ["localhost:8000", "http://", "http://[::1", "ftp://images.example.com"])
def test_a_url_that_is_no_service_address_is_a_usage_error(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a.jpg").write_bytes(samples.photo(9302))
    assert main(["classify", str(tmp_path), "--url", url, "--token", "t"]) == 2
    err = capsys.readouterr().err
    assert f"error: --url {url}:" in err and "Traceback" not in err


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
        self.names: dict[str, str] = {}

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
            self.names[collection_id] = b"".join(uploaded(request, "name")).decode()
            return httpx.Response(202, json={"id": collection_id})
        if seen == "GET /api/collections":  # newest first
            items = [{"id": c, "name": self.names[c]} for c in reversed(self.collections)]
            return httpx.Response(200, json={"items": items})
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


def uploaded(request: httpx.Request, field: str = "files") -> Iterator[bytes]:
    """The files (or another field) of a multipart request."""
    head = f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + request.content)
    for part in message.iter_parts():
        if part.get_param("name", header="content-disposition") == field:
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


class ChangingService(FakeService):
    """A FakeService during whose credential check a file of the folder is rewritten: after the walk read it."""

    def __init__(self, changed: Path) -> None:
        super().__init__()
        self.changed, self.working = changed, True

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/users/me":
            self.changed.write_bytes(samples.photo(9450))
        return super().__call__(request)


def test_a_file_changed_after_the_walk_is_classified_as_sent(tmp_path: Path) -> None:
    folder = tmp_path / "trip"
    folder.mkdir()
    for i in range(3):
        (folder / f"p{i}.jpg").write_bytes(samples.photo(9440 + i))
    out = tmp_path / "trip.csv"
    service = ChangingService(folder / "p1.jpg")
    command = ["classify", str(folder), "--out", str(out), "--token", "t", "--url", "http://svc"]
    assert main(command, httpx.MockTransport(service)) == 0
    rows = {row["file_name"]: row for row in read_rows(out)}
    assert sorted(rows) == ["p0.jpg", "p1.jpg", "p2.jpg"]  # a row for each: none lost
    assert rows["p1.jpg"]["sha256"] == hashlib.sha256(samples.photo(9450)).hexdigest()  # the bytes sent


def test_an_unreadable_file_is_a_failed_row_and_the_rest_are_classified(tmp_path: Path) -> None:
    folder = tmp_path / "trip"
    folder.mkdir()
    for i in range(2):
        (folder / f"p{i}.jpg").write_bytes(samples.photo(9460 + i))
    (folder / "bad.jpg").symlink_to("/proc/self/mem")  # a regular file whose read fails (EIO), even for root
    out = tmp_path / "trip.csv"
    service = FakeService()
    service.working = True
    command = ["classify", str(folder), "--out", str(out), "--token", "t", "--url", "http://svc"]
    assert main(command, httpx.MockTransport(service)) == 1
    rows = {row["file_name"]: row for row in read_rows(out)}
    assert rows["bad.jpg"]["status"] == "failed" and "Could not read the file" in rows["bad.jpg"]["error"]
    assert rows["p0.jpg"]["status"] == rows["p1.jpg"]["status"] == "done"


def test_names_that_are_not_utf8_are_sent_and_written(tmp_path: Path) -> None:
    folder = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9"))  # an old disk's Latin-1 names
    folder.mkdir()
    Path(os.fsdecode(bytes(folder) + b"/\xff1.jpg")).write_bytes(samples.photo(9480))
    Path(os.fsdecode(bytes(folder) + b"/\xfe1.jpg")).write_bytes(samples.photo(9481))  # shown alike
    out = tmp_path / "trip.csv"
    service = FakeService()
    service.working = True
    command = ["classify", str(folder), "--out", str(out), "--token", "t", "--url", "http://svc"]
    assert main(command, httpx.MockTransport(service)) == 0
    rows = read_rows(out)
    assert [row["file_name"] for row in rows] == ["\ufffd1.jpg", "\ufffd1.jpg"]
    assert {row["sha256"] for row in rows} == {hashlib.sha256(samples.photo(n)).hexdigest() for n in (9480, 9481)}


def test_each_collection_sent_is_appended_to_the_state_not_rewritten(tmp_path: Path, cache_dir: Path) -> None:
    sent = client.SentCollections.load("http://svc", 7, tmp_path)
    sent.keep({})
    for n in range(3):
        before = sent.path.read_bytes()
        sent.add(f"c{n}", [f"{n}" * 64])
        assert sent.path.read_bytes().startswith(before)  # what was saved is left as it was
    with sent.path.open("a") as file:
        file.write('{"folder": "x", "collections": {"c3": ["')  # cut short by a crash
    assert client.SentCollections.load("http://svc", 7, tmp_path).collections == {
        f"c{n}": [f"{n}" * 64] for n in range(3)
    }
    # A state saved by the client before (one JSON object) is still resumed.
    sent.path.write_text(json.dumps({"folder": "x", "collections": {"old": ["a" * 64]}}))
    assert client.SentCollections.load("http://svc", 7, tmp_path).collections == {"old": ["a" * 64]}


class LostAnswerService(FakeService):
    """A FakeService that makes its second collection but whose answer is lost (a timeout)."""

    def __call__(self, request: httpx.Request) -> httpx.Response:
        response = super().__call__(request)
        posted = f"{request.method} {request.url.path}" == "POST /api/collections"
        if posted and self.created == 2 and not self.working:
            raise httpx.ReadTimeout("timed out", request=request)
        return response


def test_a_collection_whose_answer_was_lost_is_found_not_sent_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cache_dir: Path
) -> None:
    folder = tmp_path / "trip"
    folder.mkdir()
    for i in range(5):
        (folder / f"p{i}.jpg").write_bytes(samples.photo(9500 + i))
    out = tmp_path / "trip.csv"
    service = LostAnswerService()
    command = ["classify", str(folder), "--out", str(out), "--chunk", "2", "--token", "t", "--url", "http://svc"]
    assert main(command, httpx.MockTransport(service)) == 3  # timed out
    assert "timed out" in capsys.readouterr().err and service.created == 2

    service.working = True
    assert main(command, httpx.MockTransport(service)) == 0
    assert "5 images, 0 already classified, 4 sent before and resumed, 1 to send" in capsys.readouterr().err
    assert service.created == 3  # the second one found, not sent again
    assert [row["status"] for row in read_rows(out)] == ["done"] * 5
    assert not list(cache_dir.glob("*.json"))


class OneSlowCollection(FakeService):
    """A FakeService whose first collection is done at its first look, the second at its sixth."""

    def finished(self, collection_id: str) -> bool:
        return self.working and self.looks[collection_id] >= (1 if collection_id == "c1" else 6)


def test_a_collection_done_is_not_asked_about_again(tmp_path: Path) -> None:
    for i in range(4):
        (tmp_path / f"p{i}.jpg").write_bytes(samples.photo(9490 + i))
    service = OneSlowCollection()
    service.working = True
    command = ["classify", str(tmp_path), "--out", str(tmp_path / "o.csv"), "--chunk", "2", "--token", "t"]
    assert main([*command, "--url", "http://svc"], httpx.MockTransport(service)) == 0
    assert service.requests.count("GET /api/collections/c2") == 6
    assert service.requests.count("GET /api/collections/c1") == 1


def test_a_large_file_is_hashed_a_chunk_at_a_time(tmp_path: Path) -> None:
    (tmp_path / "big.jpg").write_bytes(b"\0" * (64 << 20))
    tracemalloc.start()
    try:
        [found] = client.find_images(tmp_path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert found.sha256 == hashlib.sha256(b"\0" * (64 << 20)).hexdigest()
    assert peak < 8 << 20, peak


# ---- a server that answers oddly -------------------------------------------------------------------------

ODD_DEFAULTS: dict[str, tuple[int, dict[str, str], bytes]] = {
    "GET /api/users/me": (200, {}, b'{"id": 1}'),
    "POST /api/predictions/lookup": (200, {}, b'{"found": {}}'),
    "POST /api/collections": (202, {}, b'{"id": "c1"}'),
    "GET /api/collections/c1": (200, {}, b'{"status": "done", "progress": {"total": 1, "done": 1, "failed": 0}}'),
}


@pytest.fixture
def odd_server() -> Iterator[tuple[str, dict[str, list[tuple[int, dict[str, str], bytes]]], list[str]]]:
    """A tiny HTTP server answering each "METHOD path" with its next scripted answer (or ODD_DEFAULTS');
    an answer of status 0 drops the connection instead."""
    scripts: dict[str, list[tuple[int, dict[str, str], bytes]]] = {}
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            route = f"{self.command} {self.path.partition('?')[0]}"
            seen.append(route)
            queued = scripts.get(route)
            status, headers, body = queued.pop(0) if queued else ODD_DEFAULTS[route]
            if not status:
                self.close_connection = True
                return
            self.send_response(status)
            for key, value in (headers | {"Content-Length": str(len(body))}).items():
                self.send_header(key, value)
            self.end_headers()
            with contextlib.suppress(ConnectionError):  # the client stopped reading
                self.wfile.write(body)

        do_GET = do_POST = answer

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", scripts, seen
    server.shutdown()
    server.server_close()


ODD_ANSWERS = {
    "redirected": ("GET /api/users/me", 301, {"Location": "https://svc.example/api/users/me"}, b"", "301, sent on"),
    "an HTML page": ("GET /api/users/me", 200, {}, b"<html>sign in</html>", "no JSON object"),
    "a JSON list": ("GET /api/users/me", 200, {}, b"[1, 2]", "no JSON object"),
    "an error as a list": ("POST /api/predictions/lookup", 500, {}, b"[1]", "500 Internal Server Error"),
    "no id": ("POST /api/collections", 202, {}, b"{}", "not shaped as expected"),
    "results not a mapping": ("POST /api/predictions/lookup", 200, {}, b'{"found": [1]}', "not shaped as expected"),
    "a result short of fields": ("POST /api/predictions/lookup", 200, {}, b'{"found": {"x": {}}}', "not shaped"),
    "no progress": ("GET /api/collections/c1", 200, {}, b'{"status": "done"}', "not shaped as expected"),
    "40 MB": ("GET /api/users/me", 200, {}, b" " * (40 << 20), "bytes"),
    "dropped": ("POST /api/collections", 0, {}, b"", "error:"),
}


@pytest.mark.parametrize("case", ODD_ANSWERS)
def test_an_odd_answer_is_a_clear_error_and_exit_3(
    case: str,
    tmp_path: Path,
    odd_server: tuple[str, dict[str, list[tuple[int, dict[str, str], bytes]]], list[str]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, scripts, _ = odd_server
    route, status, headers, body, said = ODD_ANSWERS[case]
    scripts[route] = [(status, headers, body)]
    (tmp_path / "a.jpg").write_bytes(samples.photo(9470))
    assert main(["classify", str(tmp_path), "--url", url, "--token", "t", "--out", str(tmp_path / "o.csv")]) == 3
    err = capsys.readouterr().err
    assert said in err and "Traceback" not in err


@pytest.mark.parametrize("retry_after", ["-1", "0", "0.01"])
def test_a_busy_answer_is_sent_again_whatever_its_retry_after(
    retry_after: str,
    tmp_path: Path,
    odd_server: tuple[str, dict[str, list[tuple[int, dict[str, str], bytes]]], list[str]],
) -> None:
    url, scripts, seen = odd_server
    scripts["POST /api/collections"] = [(429, {"Retry-After": retry_after}, b"{}")]
    (tmp_path / "a.jpg").write_bytes(samples.photo(9471))
    # Sent again, then classified (the stand-in has no result for it: a failed row, exit 1).
    assert main(["classify", str(tmp_path), "--url", url, "--token", "t", "--out", str(tmp_path / "o.csv")]) == 1
    assert seen.count("POST /api/collections") == 2
    [row] = read_rows(tmp_path / "o.csv")
    assert row["file_name"] == "a.jpg" and row["status"] == "failed" and "No result" in row["error"]


def test_a_retry_after_of_a_date_or_nonsense_waits_a_little() -> None:
    from app.remote import BUSY_WAIT_S, busy_wait

    assert busy_wait("Wed, 21 Oct 2015 07:28:00 GMT") == busy_wait("nan") == busy_wait("1e999") == BUSY_WAIT_S
    assert busy_wait("-3") == 0 and busy_wait("2") == 2 and busy_wait("3600") == BUSY_WAIT_S


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
