"""`imgclass`: classify a whole folder of images from the command line.

Installed with the package (`pip install .`) as the `imgclass` command; `python -m app.client` is the same
program. It sends the folder's images in chunks, each a collection, shows progress, and writes one CSV row
per image. Run it again after an interruption, or after adding photos: the collections it sent are resumed
(a small state file under the user's cache directory remembers them, by service, account and folder, and
each by the sha256 of its images), and images the service already classified are not sent again.
"""

from __future__ import annotations

import argparse
import getpass
import hashlib
import json
import os
import secrets
import shlex
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

import httpx
import platformdirs
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from app.exports import write_csv
from app.remote import LOOKUP_LIMIT, ClientError, Service, UsageError, chunks

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".heic", ".heif", ".avif"}
# Exit statuses: every image classified; some failed (the CSV says why); bad arguments or credentials; the
# service could not be reached or refused the work; stopped with Ctrl-C (128 + SIGINT, as shells report it).
EXIT_DONE, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

# A collection gone from the service (deleted): nothing to wait for.
GONE = {"status": "done", "progress": {"total": 0, "done": 0, "failed": 0}}

EXAMPLES = """\
examples:
  imgclass classify ~/Pictures/trip --url https://images.example.com --email ada@example.com
      asks for the password, sends the folder's images (subfolders too) 50 to a collection,
      shows progress and writes results.csv

  export APP_URL=https://images.example.com APP_TOKEN=eyJ...   # from POST /api/auth/login
  imgclass classify ~/Pictures/trip --out trip.csv

  imgclass classify ~/Pictures/trip --out trip.csv    # again, after Ctrl-C or with new photos
      resumes the collections it sent; sends only what the service has not seen

environment: APP_URL, APP_TOKEN, APP_PASSWORD (instead of --url, --token, --password)

exit status:
  0    every image classified
  1    some images failed: the CSV's status and error columns say which and why
  2    usage or sign-in error (bad arguments, no or wrong credentials)
  3    the service could not be reached or refused the work
  130  interrupted (Ctrl-C): run the same command again to resume
"""


@dataclass(frozen=True, slots=True)
class LocalImage:
    path: Path
    name: str  # relative to the folder: the name the server and the CSV know it by
    sha256: str
    unread: str = ""  # why the file could not be read, if it could not: a failed row, the rest go on


@dataclass
class SentCollections:
    """The collections sent for one folder by one account of one service: what a rerun resumes, each with
    the sha256 of its images. Saved after each collection is created, as a line of its own appended to the
    file (rewritten whole each time, 50,000 images' state took 16 s to save, and 1,000,000's hours); a line
    cut short by a crash is passed over. Each is noted as `pending` (by a tag its name ends with) before it
    is sent, so one whose answer was lost (a timeout, a dropped connection, Ctrl-C) is found, not sent
    again. Forgotten once all are done."""

    path: Path
    folder: str
    collections: dict[str, list[str]] = field(default_factory=dict)
    pending: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def load(cls, url: str, user_id: object, folder: Path) -> SentCollections:
        where = str(folder.resolve())
        key = hashlib.sha256(f"{url}\n{user_id}\n{where}".encode(errors="surrogateescape")).hexdigest()[:32]
        sent = cls(Path(platformdirs.user_cache_dir("imgclass")) / f"{key}.json", where)
        try:
            lines = sent.path.read_text(errors="replace").splitlines()
        except OSError:
            lines = []  # none yet, or unreadable: nothing to resume
        answered = set()
        for line in lines:
            try:
                saved = json.loads(line)
                sent.collections |= {str(c): [str(h) for h in hashes] for c, hashes in saved["collections"].items()}
                sent.pending |= {str(t): [str(h) for h in hashes] for t, hashes in saved.get("pending", {}).items()}
                answered.add(saved.get("answered"))
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
        sent.pending = {tag: hashes for tag, hashes in sent.pending.items() if tag not in answered}
        return sent

    def keep(self, collections: dict[str, list[str]]) -> None:
        self.collections, self.pending = collections, {}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(self._line(collections))
        temporary.replace(self.path)

    def sending(self, tag: str, hashes: list[str]) -> None:
        self._append(self._line({}, pending={tag: hashes}))

    def add(self, collection_id: str, hashes: list[str], tag: str = "") -> None:
        self.collections[collection_id] = hashes
        self._append(self._line({collection_id: hashes}, answered=tag))

    def _append(self, line: str) -> None:
        with self.path.open("a") as file:
            file.write(line)

    def _line(self, collections: dict[str, list[str]], **more: object) -> str:
        return json.dumps({"folder": self.folder, "collections": collections, **more}) + "\n"

    def forget(self) -> None:
        self.path.unlink(missing_ok=True)


def progress_bar(console: Console) -> Progress:
    columns = (TextColumn("{task.description:<11}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    return Progress(*columns, TimeRemainingColumn(), console=console)


def label(name: str) -> str:
    """A file's or folder's name for the service and the CSV: bytes that are not UTF-8 (a name from an old camera or
    disk, which Python keeps as surrogates that cannot be sent) shown as U+FFFD."""
    return name.encode(errors="surrogateescape").decode(errors="replace")


def unreadable(exc: OSError) -> str:
    """Why a file could not be read: its failed row's error."""
    return f"Could not read the file: {exc.strerror or exc}"


def find_images(folder: Path, bar: Progress | None = None) -> list[LocalImage]:
    """The folder's images (by their name; hidden files and folders left out), each with its sha256."""
    paths = []
    for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):  # images only held
        relative = path.relative_to(folder)
        if not any(p.startswith(".") for p in relative.parts) and path.is_file():
            paths.append((path, label(relative.as_posix())))
    task = bar.add_task("reading", total=len(paths)) if bar else None
    found = []
    for path, name in paths:
        try:
            with path.open("rb") as file:  # a chunk at a time: a huge file is not held whole
                found.append(LocalImage(path, name, hashlib.file_digest(file, "sha256").hexdigest()))
        except OSError as exc:  # unreadable, or gone since the walk
            found.append(LocalImage(path, name, "", unreadable(exc)))
        if bar and task is not None:
            bar.advance(task)
    return found


def read_again(images: list[LocalImage]) -> list[tuple[LocalImage, bytes]]:
    """The images as they are now, each with its bytes: their sha256 is that of those bytes (a file may have
    changed since it was read), or, unreadable now, with none and why."""
    read = []
    for image in images:
        try:
            content = image.path.read_bytes()
            read.append((replace(image, sha256=hashlib.sha256(content).hexdigest()), content))
        except OSError as exc:
            read.append((replace(image, unread=unreadable(exc)), b""))
    return read


def write_results(service: Service, images: list[LocalImage], out: IO[str]) -> int:
    """Write the images' CSV rows, looked up LOOKUP_LIMIT at a time (a million images' results, held at
    once, would take GBs); how many failed."""
    failed = 0

    def rows() -> Iterator[dict[str, Any]]:
        nonlocal failed
        for part in chunks(images, LOOKUP_LIMIT):
            results = service.lookup([i.sha256 for i in part if not i.unread])
            for image in part:
                row = results.get(image.sha256, unclassified(image)) | {"file_name": image.name}
                failed += row["status"] != "done"
                yield row

    write_csv(rows(), out)
    return failed


def unclassified(image: LocalImage) -> dict[str, Any]:
    """The row of an image with no result: unreadable, or changed while it was sent."""
    error = image.unread or "No result from the service (changed while it was sent?): run the command again"
    fields: dict[str, Any] = {"image_sha256": image.sha256, "label": None, "wnid": None, "score": None, "top5": []}
    return fields | {"status": "failed", "error": error}


def classify(service: Service, folder: Path, out: Path, chunk: int, name: str, poll: float = 0.5) -> dict[str, int]:
    console = Console(stderr=True)
    with progress_bar(console) as bar:
        images = find_images(folder, bar)
        if not images:
            raise UsageError(f"no images in {folder}")
        hashes = {i.sha256 for i in images if not i.unread}
        sent = SentCollections.load(service.url, service.user_id(), folder)
        for tag, unanswered in sent.pending.items():  # sent, but the answer lost: made all the same?
            if found := service.named(tag):
                sent.collections[found] = unanswered
        # Resumed: those of this folder's images (by content), still on the service.
        sent.keep({c: h for c, h in sent.collections.items() if hashes & set(h) and service.progress(c)})
        in_progress = {h for part in sent.collections.values() for h in part}
        parts = chunks(sorted(hashes), LOOKUP_LIMIT)  # each part's results let go once read
        finished = {h for part in parts for h, r in service.lookup(part).items() if r["status"] in ("done", "failed")}
        skip = finished | in_progress  # once: made for each image, a rerun of 20,000 took 15 s here
        todo = [i for i in images if not i.unread and i.sha256 not in skip]
        already = sum(i.sha256 in finished for i in images)
        bar.console.print(
            f"{len(images)} images, {already} already classified, {len(images) - already - len(todo)} sent before"
            f" and resumed, {len(todo)} to send",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        sending = bar.add_task("uploading", total=len(todo))
        latest = {i.path: i for i in images}  # by path: names of undecodable bytes may be alike
        for part in chunks(todo, chunk):
            read = read_again(part)
            latest |= {i.path: i for i, _ in read}
            if readable := [(i, content) for i, content in read if not i.unread]:
                tag, sent_hashes = secrets.token_hex(4), [i.sha256 for i, _ in readable]
                sent.sending(tag, sent_hashes)
                files = [(i.name, content) for i, content in readable]
                collection_id = service.upload(files, f"{name[:200]} ({len(sent.collections) + 1}, {tag})")
                sent.add(collection_id, sent_hashes, tag)
            bar.advance(sending, len(part))
        classifying = bar.add_task("classifying", total=None)
        described: dict[str, dict[str, Any]] = {}
        while True:
            # Only those not done yet are asked again: all asked, 2,000 collections made 2,000 requests a round.
            for collection_id in sent.collections:
                if described.get(collection_id, {}).get("status") != "done":
                    described[collection_id] = service.progress(collection_id) or GONE
            counts = [d["progress"] for d in described.values()]
            total = sum(c["total"] for c in counts)
            bar.update(classifying, total=total, completed=sum(c["done"] + c["failed"] for c in counts))
            if all(d["status"] == "done" for d in described.values()):
                break
            time.sleep(poll)
    images = list(latest.values())  # as sent
    with out.open("w", encoding="utf-8", newline="") as file:
        failed = write_results(service, images, file)
    sent.forget()
    summary = {"images": len(images), "skipped": already, "sent": len(todo), "rows": len(images), "failed": failed}
    console.print(f"wrote {out}: {summary}", markup=False, highlight=False, soft_wrap=True)
    return summary


def parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    description = "Classify whole folders of images with the image classification service."
    top = argparse.ArgumentParser(prog="imgclass", description=description, epilog=EXAMPLES, formatter_class=formatter)
    commands = top.add_subparsers(dest="command", required=True)
    run = commands.add_parser(
        "classify",
        help="classify every image in a folder and write a CSV",
        description="Classify every image in a folder (and its subfolders) and write one CSV row per image.",
        epilog=EXAMPLES,
        formatter_class=formatter,
    )
    run.add_argument("folder", type=Path, help="the folder of images (JPEG, PNG, WebP, GIF, BMP, HEIC, AVIF)")
    run.add_argument("--url", default=os.environ.get("APP_URL", "http://localhost:8000"), help="the service")
    run.add_argument("--token", default=os.environ.get("APP_TOKEN"), help="a bearer token, instead of signing in")
    run.add_argument("--email", help="sign in with this account")
    run.add_argument("--password", default=os.environ.get("APP_PASSWORD"), help="asked for when not given")
    run.add_argument("--out", type=Path, default=Path("results.csv"), help="the CSV to write (results.csv)")
    run.add_argument("--chunk", type=int, default=50, help="images per collection (50)")
    run.add_argument("--name", default="", help="name of the collections (default: the folder's)")
    return top


def resume_hint(args: argparse.Namespace) -> str:
    command = ["imgclass", "classify", str(args.folder), "--url", args.url, "--out", str(args.out)]
    return shlex.join(command + (["--email", args.email] if args.email else []))


def main(argv: list[str] | None = None, transport: httpx.BaseTransport | None = None) -> int:
    command = parser()
    args = command.parse_args(argv)
    if not args.folder.is_dir():
        command.error(f"{args.folder} is not a folder")
    try:
        if args.email and not args.password and not args.token and sys.stdin.isatty():
            args.password = getpass.getpass(f"password for {args.email}: ")
        service = Service(args.url, args.token, args.email, args.password, transport)
        summary = classify(service, args.folder, args.out, max(1, args.chunk), label(args.name or args.folder.name))
    except KeyboardInterrupt:
        print(
            "\ninterrupted. What was sent goes on being classified; to resume (nothing is sent twice), run:\n"
            f"  {resume_hint(args)}",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except (UsageError, OSError) as exc:  # OSError: a file of the folder, or --out, could not be read or written
        print(f"\nerror: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (ClientError, httpx.HTTPError) as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    return EXIT_SOME_FAILED if summary["failed"] else EXIT_DONE


if __name__ == "__main__":
    sys.exit(main())
