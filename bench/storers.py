"""How long the count of the people storing originals takes (app/usage.py `storers`, read once a minute by each
web process while the image store is crowded), on a database filled by plain SQL:

    python bench/storers.py DATABASE_URL [--predictions 1000000] [--people 100] [--pruned 0.1] [--runs 5]

The database is migrated first, and filled only when it has no predictions: `--people` accounts, each with
the same share of the predictions, of which `--pruned` no longer keep their original; one person in ten also
has a collection being read. Prints the query's plan and its median time over `--runs` readings.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

# Runnable as a script from a checkout without `pip install -e .`: put the project root on the path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tortoise import Tortoise, connections

from app import db, usage
from bench.procs import exit_on_sigterm

NUMBERS = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {count}) "


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("database_url", help="sqlite://PATH or postgres://...")
    parser.add_argument("--predictions", type=int, default=1_000_000)
    parser.add_argument("--people", type=int, default=100)
    parser.add_argument("--pruned", type=float, default=0.1, help="the share of predictions whose original is gone")
    parser.add_argument("--runs", type=int, default=5)
    return parser.parse_args(argv)


async def fill(sqlite: bool, predictions: int, people: int, pruned: float) -> None:
    connection = connections.get("default")
    uuid = "printf('%036d', i)" if sqlite else "md5(i::text)::uuid"
    every = max(1, round(1 / pruned)) if pruned else predictions + 1
    await connection.execute_script(
        NUMBERS.format(count=people) + "INSERT INTO users (email, name, password_hash, is_admin, created_at)"
        " SELECT 'bench' || i || '@example.com', '', 'x', FALSE, CURRENT_TIMESTAMP FROM n"
    )
    await connection.execute_script(
        NUMBERS.format(count=people)
        + "INSERT INTO collections (id, name, total, created_at, user_id, status, archive_path, archive_bytes)"
        f" SELECT {uuid}, 'c', 10, CURRENT_TIMESTAMP, i, 'reading', 'archives/' || i || '.zip', 1000"
        " FROM n WHERE i % 10 = 0"
    )
    await connection.execute_script(
        NUMBERS.format(count=predictions)
        + "INSERT INTO predictions (id, image_sha256, image_path, file_name, status, model_name, model_version,"
        " model_weights, cached, created_at, updated_at, user_id, image_bytes)"
        f" SELECT {uuid}, 'sha' || i, CASE WHEN i % {every} = 0 THEN '' ELSE 'aa/' || i || '.png' END, '',"
        f" 'done', 'resnet50', '', 'random', FALSE, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, 1 + i % {people}, 1000"
        " FROM n"
    )
    if not sqlite:  # as autovacuum would, soon after
        await connection.execute_script("VACUUM ANALYZE")


async def measure(args: argparse.Namespace) -> None:
    await db.apply_migrations(args.database_url)
    await Tortoise.init(config=db.tortoise_config(args.database_url))
    try:
        connection = connections.get("default")
        sqlite = connection.capabilities.dialect == "sqlite"
        _, rows = await connection.execute_query("SELECT COUNT(*) AS n FROM predictions")
        if not rows[0]["n"]:
            started = time.perf_counter()
            await fill(sqlite, args.predictions, args.people, args.pruned)
            print(f"filled in {time.perf_counter() - started:.1f} s")
        _, rows = await connection.execute_query(f"EXPLAIN {'QUERY PLAN ' if sqlite else ''}{usage.storers_sql()}")
        print("\n".join(str(row["detail"] if sqlite else row["QUERY PLAN"]) for row in rows))
        times, count = [], 0
        for _ in range(args.runs):
            started = time.perf_counter()
            count = await usage.storers()
            times.append(time.perf_counter() - started)
        print(
            f"storers: {count}; median {statistics.median(times) * 1000:.1f} ms over {args.runs}"
            f" (min {min(times) * 1000:.1f})"
        )
    finally:
        await Tortoise.close_connections()


def main(argv: list[str] | None = None) -> None:
    exit_on_sigterm()
    asyncio.run(measure(parse_args(argv)))


if __name__ == "__main__":
    main()
