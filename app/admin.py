"""`python -m app.admin`: administration commands, run beside the service.

`prune --older-than 90d` is the retention policy: it deletes the originals (and their thumbnails) of
finished predictions created before the cutoff and keeps their results; each such prediction's
`image_path` becomes "" (its page shows no image). An original still used by a queued prediction, by
one newer than the cutoff, or stored again in the last IN_FLIGHT (an upload in progress) is kept. It also
deletes the stored collection archives no collection reads any more (a process stopped at the wrong moment
left them), and the originals no prediction names (uploads of one image refused at once each left it to the
other), once older than IN_FLIGHT.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

from tortoise.expressions import Q

from app import db, files, images, thumbnails, usage
from app.collections import ARCHIVES_DIR
from app.models import Collection, Prediction, Status
from app.quotas import size_text
from app.settings import get_settings

IN_FLIGHT = timedelta(minutes=10)  # longer than any upload takes from storing its original to its row
PRUNE_BATCH = 500
FINISHED = (Status.DONE, Status.FAILED)
AGE_UNITS = {"d": timedelta(days=1), "h": timedelta(hours=1)}


def parse_age(text: str) -> timedelta:
    """`90d` or `12h`."""
    match = re.fullmatch(r"(\d{1,6})([dh])", text.strip().lower())
    if not match:
        raise argparse.ArgumentTypeError(f"an age in days or hours, like 90d or 12h; got {text!r}")
    age = int(match[1]) * AGE_UNITS[match[2]]
    if age > datetime.now(UTC) - datetime.min.replace(tzinfo=UTC):  # its cutoff could not be written down
        raise argparse.ArgumentTypeError(f"{text.strip()} ago is before year 1, where the calendar starts")
    return age


def age_text(age: timedelta) -> str:
    hours = int(age.total_seconds() // 3600)
    return f"{hours // 24}d" if hours % 24 == 0 else f"{hours}h"


@dataclass
class PruneReport:
    predictions: int = 0  # finished predictions whose original was let go (their results stay)
    originals: int = 0  # files deleted
    kept: int = 0  # originals kept: still used by a queued or newer prediction, or stored again just now
    archives: int = 0  # collection archives nothing reads any more
    unnamed: int = 0  # originals no prediction names
    bytes_freed: int = 0  # originals and their thumbnails, and those archives
    last: str = ""  # the hash dealt with last: a run goes image by image, so the next batch may go on with it
    last_kept: bool = False  # and whether its original was kept: the next batch's look may not say (just stored)

    def summary(self, age: str, dry_run: bool) -> str:
        verb = "Would prune" if dry_run else "Pruned"
        return (
            f"{verb} {self.predictions} finished predictions older than {age} (their results stay):"
            f" {self.originals} originals deleted, {size_text(self.bytes_freed)} freed with their thumbnails;"
            f" {self.kept} originals kept, still in use; {self.archives} archives left by a stopped process;"
            f" {self.unnamed} originals no prediction names"
        )


async def _still_used(shas: set[str], cutoff: datetime) -> set[str]:
    """Of `shas`, the originals a queued prediction or one newer than `cutoff` still needs."""
    rows = (
        await Prediction.filter(image_sha256__in=shas)
        .exclude(image_path="")
        .filter(Q(status=Status.QUEUED) | Q(created_at__gte=cutoff))
        .distinct()
        .order_by("image_sha256")  # not the model's default: PostgreSQL's DISTINCT needs it selected
        .values_list("image_sha256", flat=True)
    )
    return {str(sha) for sha in rows}


async def _remove(upload_dir: Path, sha: str, relative_path: str, used_since: float, dry_run: bool) -> int | None:
    """Delete one original and its thumbnail: the bytes freed, or None if the original is kept."""
    freed = await asyncio.to_thread(files.remove_file, upload_dir / relative_path, used_since, dry_run)
    if freed is None:
        return None
    thumbnail = thumbnails.thumbnail_path(upload_dir, sha)
    thumbnail_freed = await asyncio.to_thread(files.remove_file, thumbnail, None, dry_run)
    return freed + (thumbnail_freed or 0)


async def _let_go(rows: list[tuple[UUID, str, str]], used: set[str]) -> None:
    """The batch's predictions let their originals go. A person's original is charged to one of their
    predictions of it, the others 0 (usage.charged_bytes): when that one lets it go and a newer one of theirs
    keeps it, the newer one is charged it instead, once the batch's are let go (the index
    predictions_charged_once allows one charged prediction per person and original kept). One made after the
    search charges itself (usage.charged_if_none)."""
    batch = [row[0] for row in rows]
    kept = [row_id for row_id, sha, _ in rows if sha in used]
    charged = await Prediction.filter(id__in=kept, image_bytes__gt=0).values_list(
        "user_id", "image_sha256", "image_bytes"
    )
    await Prediction.filter(id__in=batch).update(image_path="")
    for user_id, sha, size in charged:
        await usage.pass_charge(user_id, sha, size, batch)


async def _prune_batch(
    rows: list[tuple[UUID, str, str]], cutoff: datetime, upload_dir: Path, dry_run: bool, report: PruneReport
) -> None:
    used = await _still_used({sha for _, sha, _ in rows}, cutoff)
    if report.last_kept:  # kept by the batch before, maybe as stored again just now: its charge passes on here too
        used.add(report.last)
    used_since = time.time() - IN_FLIGHT.total_seconds()
    for sha, relative_path in sorted({(sha, path) for _, sha, path in rows if sha != report.last}):
        freed = None if sha in used else await _remove(upload_dir, sha, relative_path, used_since, dry_run)
        if freed is None:
            used.add(sha)  # stored again just now too: an upload's row may keep it, and be charged it
            report.kept += 1
        else:
            report.originals += 1 if freed else 0
            report.bytes_freed += freed
    if not dry_run:
        await _let_go(rows, used)
    report.predictions += len(rows)
    report.last = rows[-1][1]
    report.last_kept = report.last in used


async def _prune_archives(upload_dir: Path, dry_run: bool, report: PruneReport) -> None:
    """Delete the stored archives no collection points at: a collection's start stopped between storing its
    archive and making its row, or a reading stopped between finishing and deleting it."""
    folder = upload_dir / ARCHIVES_DIR
    read = set(await Collection.exclude(archive_path="").values_list("archive_path", flat=True))
    used_since = time.time() - IN_FLIGHT.total_seconds()  # a start in progress: its row is still to come
    names = await asyncio.to_thread(lambda: sorted(p.name for p in folder.iterdir()) if folder.is_dir() else [])
    for name in names:
        if f"{ARCHIVES_DIR}/{name}" in read or name.startswith(files.PARTIAL_PREFIX):  # partials: the disk walk's
            continue
        freed = await asyncio.to_thread(files.remove_file, folder / name, used_since, dry_run)
        if freed:
            report.archives += 1
            report.bytes_freed += freed


def _original_folders(upload_dir: Path) -> list[Path]:
    if not upload_dir.is_dir():
        return []
    return sorted(p for p in upload_dir.iterdir() if p.is_dir() and images.ORIGINALS_FOLDER.fullmatch(p.name))


def _originals_in(folder: Path) -> dict[str, str]:
    """The originals of one folder of UPLOAD_DIR: relative path -> sha256 (writes cut off left out)."""
    found = {}
    for path in folder.iterdir():
        if path.is_file() and not path.name.startswith(files.PARTIAL_PREFIX):
            found[f"{folder.name}/{path.name}"] = path.name.partition(".")[0]
    return found


async def _prune_unnamed(upload_dir: Path, dry_run: bool, report: PruneReport) -> None:
    """Delete the originals no prediction names, once older than IN_FLIGHT: an upload refused after storing one
    removes it only if no other upload stored it again since (app.sandbox.DecodePool.forget), so two
    of one image refused at once each left it to the other; and a process stopped between storing an original
    and making its row. A folder (1/256 of them) at a time, its names asked PRUNE_BATCH at a time."""
    used_since = time.time() - IN_FLIGHT.total_seconds()
    for folder in await asyncio.to_thread(_original_folders, upload_dir):
        originals = sorted((await asyncio.to_thread(_originals_in, folder)).items())
        for start in range(0, len(originals), PRUNE_BATCH):
            batch = dict(originals[start : start + PRUNE_BATCH])
            # By the index on image_sha256 (none is on image_path): a hash's rows, and the paths they name.
            rows = Prediction.filter(image_sha256__in=set(batch.values())).exclude(image_path="")
            named = set(await rows.values_list("image_path", flat=True))
            for relative_path in sorted(batch.keys() - named):
                freed = await _remove(upload_dir, batch[relative_path], relative_path, used_since, dry_run)
                if freed:
                    report.unnamed += 1
                    report.bytes_freed += freed


async def prune(upload_dir: Path, older_than: timedelta, dry_run: bool = False) -> PruneReport:
    """Apply the retention policy to the predictions created more than `older_than` ago."""
    cutoff = datetime.now(UTC) - older_than
    report = PruneReport()
    await _prune_archives(upload_dir, dry_run, report)
    await _prune_unnamed(upload_dir, dry_run, report)
    query = Prediction.filter(status__in=FINISHED, created_at__lt=cutoff).exclude(image_path="")
    after: Q | None = None
    while True:
        page = query.filter(after) if after is not None else query
        # Image by image (the index on image_sha256): an image met again is always the one dealt with last.
        rows = (
            await page.order_by("image_sha256", "id").limit(PRUNE_BATCH).values_list("id", "image_sha256", "image_path")
        )
        if not rows:
            return report
        await _prune_batch(rows, cutoff, upload_dir, dry_run, report)
        last_id, last_sha = rows[-1][0], rows[-1][1]
        after = Q(image_sha256__gt=last_sha) | Q(image_sha256=last_sha, id__gt=last_id)


async def _prune_command(age: timedelta, dry_run: bool) -> PruneReport:
    settings = get_settings()
    await db.init_db(settings.database_url)
    try:
        return await prune(settings.upload_dir, age, dry_run)
    finally:
        await db.close_db()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m app.admin", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    pruning = commands.add_parser(
        "prune", help="delete the originals of old finished predictions, keeping their results"
    )
    pruning.add_argument(
        "--older-than", required=True, type=parse_age, metavar="AGE", help="created before this long ago: 90d, 12h"
    )
    pruning.add_argument("--dry-run", action="store_true", help="say what would be deleted, and delete nothing")
    args = parser.parse_args(argv)
    report = asyncio.run(_prune_command(args.older_than, args.dry_run))
    print(report.summary(age_text(args.older_than), args.dry_run))


if __name__ == "__main__":
    main()
