"""Command-line client for scripted use: classify a whole folder.

    python -m app.client classify DIR --url http://localhost:8000 (--token T | --email E --password P)
                                      [--out results.csv] [--chunk 50] [--name NAME]

Uploads the folder's images in chunks (each a collection), shows progress, and writes one CSV row per
image. Run it again after an interruption: images the server already has (by sha256) are not sent again.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from app.exports import to_csv

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp"}
LOOKUP_LIMIT = 1000
# A collection refused for now (429 or 503 with Retry-After) is sent again, up to this many times.
BUSY_ATTEMPTS = 120
BUSY_WAIT_S = 5.0


class ClientError(RuntimeError):
    pass


@dataclass(frozen=True)
class LocalImage:
    path: Path
    name: str  # relative to the folder: the name the server and the CSV know it by
    sha256: str


def find_images(folder: Path) -> list[LocalImage]:
    found = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if (
            path.is_file()
            and path.suffix.lower() in IMAGE_SUFFIXES
            and not any(p.startswith(".") for p in relative.parts)
        ):
            found.append(LocalImage(path, relative.as_posix(), hashlib.sha256(path.read_bytes()).hexdigest()))
    return found


def chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def show(done: int, total: int, label: str) -> None:
    width = 30
    filled = width * done // max(total, 1)
    sys.stderr.write(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
    sys.stderr.flush()


class Service:
    def __init__(self, url: str, token: str | None, email: str | None, password: str | None) -> None:
        self.http = httpx.Client(base_url=url.rstrip("/"), timeout=300)
        if not token:
            if not (email and password):
                raise ClientError("give --token, or --email and --password")
            token = self._login(email, password)
        self.http.headers["Authorization"] = f"Bearer {token}"

    def _check(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise ClientError(f"{response.request.method} {response.request.url.path}: {response.status_code} {detail}")
        return response.json()

    def _login(self, email: str, password: str) -> str:
        body = self._check(self.http.post("/api/auth/login", json={"email": email, "password": password}))
        token: str = body["access_token"]
        return token

    def lookup(self, hashes: list[str]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        for part in chunks(sorted(set(hashes)), LOOKUP_LIMIT):
            found |= self._check(self.http.post("/api/predictions/lookup", json={"sha256": part}))["found"]
        return found

    def upload(self, images: list[LocalImage], name: str) -> str:
        files = [("files", (image.name, image.path.read_bytes())) for image in images]
        for _ in range(BUSY_ATTEMPTS):
            response = self.http.post("/api/collections", files=files, data={"name": name})
            # Too many collections in progress, or the service busy: wait as told (a little at a time,
            # since one of ours may finish sooner), then try again.
            if response.status_code not in (429, 503) or "Retry-After" not in response.headers:
                break
            time.sleep(min(float(response.headers["Retry-After"]), BUSY_WAIT_S))
        body = self._check(response)
        collection_id: str = body["id"]
        return collection_id

    def progress(self, collection_id: str) -> dict[str, Any]:
        """The collection's `status` (reading, classifying, done) and its `progress` counts."""
        body: dict[str, Any] = self._check(self.http.get(f"/api/collections/{collection_id}", params={"per_page": 1}))
        return body


def classify(service: Service, folder: Path, out: Path, chunk: int, name: str, poll: float = 0.5) -> dict[str, int]:
    images = find_images(folder)
    if not images:
        raise ClientError(f"no images in {folder}")
    known = service.lookup([i.sha256 for i in images])
    todo = [i for i in images if known.get(i.sha256, {}).get("status") not in ("done", "failed")]
    skipped = len(images) - len(todo)
    print(f"{len(images)} images, {skipped} already classified, {len(todo)} to send", file=sys.stderr)
    pending: list[str] = []
    for i, part in enumerate(chunks(todo, chunk)):
        show(i * chunk, len(todo), "uploading ")
        pending.append(service.upload(part, f"{name} ({i + 1})"))
    if todo:
        show(len(todo), len(todo), "uploading ")
        sys.stderr.write("\n")
    while pending:
        described = [service.progress(c) for c in pending]
        counts = [d["progress"] for d in described]
        finished = sum(c["done"] + c["failed"] for c in counts)
        show(finished, sum(c["total"] for c in counts), "classified")
        if all(d["status"] == "done" for d in described):
            break
        time.sleep(poll)
    if pending:
        sys.stderr.write("\n")
    results = service.lookup([i.sha256 for i in images])
    rows = [results[i.sha256] | {"file_name": i.name} for i in images if i.sha256 in results]
    out.write_text(to_csv(rows))
    summary = {"images": len(images), "skipped": skipped, "sent": len(todo), "rows": len(rows)}
    print(f"wrote {out}: {summary}", file=sys.stderr)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.client", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("classify", help="classify every image in a folder and write a CSV")
    run.add_argument("folder", type=Path)
    run.add_argument("--url", default=os.environ.get("APP_URL", "http://localhost:8000"))
    run.add_argument("--token", default=os.environ.get("APP_TOKEN"))
    run.add_argument("--email")
    run.add_argument("--password", default=os.environ.get("APP_PASSWORD"))
    run.add_argument("--out", type=Path, default=Path("results.csv"))
    run.add_argument("--chunk", type=int, default=50, help="images per upload request")
    run.add_argument("--name", default="", help="name for the collections (default: the folder's)")
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        parser.error(f"{args.folder} is not a folder")
    try:
        service = Service(args.url, args.token, args.email, args.password)
        classify(service, args.folder, args.out, max(1, args.chunk), args.name or args.folder.name)
    except (ClientError, httpx.HTTPError) as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
