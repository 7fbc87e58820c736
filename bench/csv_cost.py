"""The web process's CPU to make the CSV downloads: a collection's results.csv (app/collections.py result_pages)
and the admin's feedback.csv (app/web/pages/admin.py feedback_pages), in-process, per 20,000 rows:

    python bench/csv_cost.py DATABASE_URL [--rows 20000] [--runs 5]

The database is migrated first; a collection of `--rows` finished images of one bench account, each with its
owner's feedback, is made the first time (formula-leading names, failures, trained and untrained weights). Each
run makes both files through `exports.csv_text`, as a download does, and reads its CPU time (time.process_time:
the whole process, so SQLite's thread is counted). Prints the min and median per 20,000 rows, and a digest of
each file's text, to tell that a change to how they are made left them the same.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

# Runnable as a script from a checkout without `pip install -e .`: put the project root on the path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app import collections, db
from app.exports import RESULT_CSV_COLUMNS, csv_text
from app.feedback import FeedbackFilter
from app.models import Collection, CollectionStatus, Feedback, Prediction, Status, User
from app.turns import Turns
from app.web.pages import admin
from bench.procs import exit_on_sigterm

EMAIL = "csv-cost-bench@example.com"
NAMES = ["=SUM(A1)", "+1", "-2", "@x", "\tx", "a,b", 'q"uote', "line\nbreak", "plain", "ünïcode"]
PER = 20_000  # figures per this many rows
BATCH = 2_000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("database_url", help="sqlite://PATH or postgres://...")
    parser.add_argument("--rows", type=int, default=PER)
    parser.add_argument("--runs", type=int, default=5)
    return parser.parse_args(argv)


def prediction(person: User, collection: Collection, i: int, now: datetime) -> Prediction:
    failed = i % 50 == 0
    top5 = [{"label": f"label {k}", "wnid": f"n0000000{k}", "score": 0.5 / (k + 1)} for k in range(5)]
    return Prediction(
        user=person,
        collection=collection,
        entry=i,
        image_sha256=hashlib.sha256(str(i).encode()).hexdigest(),
        image_path="",
        file_name=f"{NAMES[i % 10]}-{i // 3}.jpg" if i % 7 == 0 else f"photos/img_{i // 2:05d}.jpg",
        status=Status.FAILED if failed else Status.DONE,
        label=None if failed else "golden retriever",
        wnid=None if failed else "n02099601",
        score=None if failed else 0.87654321 + i / 1e7,
        top5=None if failed else top5,
        model_name="resnet50",
        model_weights="random" if i % 3 == 0 else "imagenet",
        error="Not an image" if failed else None,
        finished_at=now,
        created_at=now + timedelta(microseconds=i % 4),  # ties of name and time: the keyset's last step
    )


async def fill(rows: int) -> Collection:
    person = await User.create(email=EMAIL, password_hash="x")
    collection = await Collection.create(user=person, total=rows, status=CollectionStatus.DONE)
    now = datetime.now(UTC)
    made = [prediction(person, collection, i, now) for i in range(rows)]
    for start in range(0, rows, BATCH):
        await Prediction.bulk_create(made[start : start + BATCH])
    ids = await Prediction.filter(collection=collection).values_list("id", flat=True)
    feedback = [
        Feedback(
            prediction_id=pid,
            user=person,
            is_correct=j % 3 != 0,
            correct_label=None if j % 3 else "beagle",
            correct_wnid=None if j % 3 else "n02088364",
            comment=NAMES[j % 10],
        )
        for j, pid in enumerate(ids)
    ]
    for start in range(0, rows, BATCH):
        await Feedback.bulk_create(feedback[start : start + BATCH])
    return collection


async def cpu_of(text: AsyncIterator[str]) -> tuple[float, str]:
    """(CPU seconds to make the whole file, a digest of its text)."""
    started, digest = time.process_time(), hashlib.sha256()
    async for part in text:
        digest.update(part.encode())
    return time.process_time() - started, digest.hexdigest()[:16]


async def measure(args: argparse.Namespace) -> None:
    await db.apply_migrations(args.database_url)
    await db.init_db(args.database_url)
    try:
        collection = await Collection.filter(user__email=EMAIL).first()
        if collection is None:
            started = time.perf_counter()
            collection = await fill(args.rows)
            print(f"filled in {time.perf_counter() - started:.1f} s")
        # Both files as a download makes them: its pages in turns (one owner here, so never waiting). The
        # feedback file is everyone's: all the database's feedback.
        files: dict[str, tuple[int, Callable[[], AsyncIterator[str]]]] = {
            "results.csv": (
                await Prediction.filter(collection=collection).count(),
                lambda: csv_text(RESULT_CSV_COLUMNS, collections.result_pages(collection), Turns(2), 1),
            ),
            "feedback.csv": (
                await Feedback.all().count(),
                lambda: csv_text(admin.FEEDBACK_CSV_COLUMNS, admin.feedback_pages(FeedbackFilter()), Turns(2), 1),
            ),
        }
        for name, (rows, make) in files.items():
            runs = [await cpu_of(make()) for _ in range(args.runs)]
            per = [cpu * PER / max(rows, 1) for cpu, _ in runs]
            print(
                f"{name}: {rows} rows; CPU s per {PER:,} rows: min {min(per):.3f}, median {statistics.median(per):.3f}"
                f" over {args.runs}; text {runs[0][1]}"
            )
    finally:
        await db.close_db()


def main(argv: list[str] | None = None) -> None:
    exit_on_sigterm()
    asyncio.run(measure(parse_args(argv)))


if __name__ == "__main__":
    main()
