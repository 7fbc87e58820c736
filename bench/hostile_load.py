"""The "hostile load" phase of `make chaos` (bench/chaos.py runs it last, on its two TensorFlow workers).
`python bench/hostile_load.py` runs it on its own, on a system of its own as bench/hostile.py starts one
(one stand-in worker: the model is not what is measured), and writes the same section.

All at once: one user sends a zip of COLLECTION_IMAGES small distinct PNGs (timed until its 202); another
floods with FLOOD_ASYNC async and FLOOD_SYNC synchronous uploads in flight together; two more send rounds
of decode bombs (tests/hostile.py's images refused from their headers); and a normal user classifies one
12 MP photo after another. Once the flood and the bombs are answered, the normal user goes on, a photo a
second, until the collection is done. Measured throughout: the normal user's latency and errors, the resident
memory of the web process and of its decode processes, Redis's `used_memory` (INFO memory) with its
baseline, and whether every accepted prediction (the flood's and the collection's) finished, done or failed,
through the API. Writes the "Hostile load" section of docs/reliability.md (`--no-write`: print it only).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import zipfile
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import chaos, hostile  # noqa: E402
from bench.procs import exit_on_sigterm, own_cpu  # noqa: E402
from tests import hostile as hostile_images  # noqa: E402

SECTION = "## Hostile load"  # written by `make chaos`; run on its own, with the stand-in model:
ALONE_SECTION = "## Hostile load, the stand-in model"
COLLECTION_IMAGES = 10_000
FLOOD_ASYNC = 400
FLOOD_SYNC = 200
BOMBS_IN_FLIGHT = 20
BOMB_ROUNDS = 3  # at least; more while the flood is still being answered
# Seeds of this phase's images (bench/chaos.py's `image`), apart from the other phases', so that none
# is answered from the result cache.
COLLECTION_SEED = 70_000_000
FLOOD_SEED = 80_000_000
PHOTO_SEED = 900_000
REDIS_TARGET_MB = 50
ANSWER_TARGET_S = 1.0


def say(message: str) -> None:
    print(f"[hostile load {time.strftime('%H:%M:%S')}] {message}", flush=True)


def archive_of_pngs(count: int, first_seed: int = COLLECTION_SEED) -> bytes:
    """A zip (deflated) of `count` distinct 96x96 PNGs, a few hundred bytes each."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for i in range(count):
            archive.writestr(f"photos/{i:05d}.png", chaos.image(first_seed + i))
    return buffer.getvalue()


@dataclass
class RedisMemory:
    """Samples Redis's INFO memory until stopped: (time, used_memory, used_memory_rss), in bytes."""

    url: str
    interval: float = 0.2
    samples: list[tuple[float, int, int]] = field(default_factory=list)
    peak_since_start: int = 0  # INFO's used_memory_peak, read at the end: since the server started

    async def info(self) -> dict[str, Any]:
        client = aioredis.Redis.from_url(self.url)
        try:
            found: dict[str, Any] = await client.info("memory")
            return found
        finally:
            await client.aclose()

    async def run(self, stop: asyncio.Event) -> None:
        client = aioredis.Redis.from_url(self.url)
        try:
            while not stop.is_set():
                info = await client.info("memory")
                self.samples.append((time.time(), info["used_memory"], info["used_memory_rss"]))
                await asyncio.sleep(self.interval)
            self.peak_since_start = (await client.info("memory"))["used_memory_peak"]
        finally:
            await client.aclose()

    def peak_mb(self, since: float = 0.0, until: float = float("inf"), rss: bool = False) -> float | None:
        found = [s[2 if rss else 1] for s in self.samples if since <= s[0] <= until]
        return max(found) / 2**20 if found else None


@dataclass
class Figures:
    setup: str
    images: int
    archive_bytes: int = 0
    answered_s: float = 0.0  # POST /api/collections until its 202
    read_s: float = 0.0  # from the 202 until the archive was read (status no longer `reading`)
    classified_s: float = 0.0  # from the 202 until the collection was done
    progress: dict[str, int] = field(default_factory=dict)  # the collection's, at the end
    started: float = 0.0
    storm_ended: float = 0.0
    storm_cpu_s: float = 0.0  # the CPU time the web process used during the storm
    client_cpu_s: float = 0.0  # and the process measuring the normal user and the health check
    flood_finished: float = 0.0
    collection_finished: float = 0.0
    flood: list[hostile.Outcome] = field(default_factory=list)
    flood_statuses: dict[str, str] = field(default_factory=dict)  # accepted id -> final status
    # Every prediction of the flooder and of the normal user at the end, through the API: by status.
    owned: dict[str, Counter[str]] = field(default_factory=dict)
    bombs: list[hostile.Outcome] = field(default_factory=list)
    quiet: list[float] = field(default_factory=list)  # the normal user: before
    storm: list[float] = field(default_factory=list)  # during the flood and the bombs
    after: list[float] = field(default_factory=list)  # while the collection goes on
    errors_quiet: list[str] = field(default_factory=list)  # the normal user's answers other than 200
    errors: list[str] = field(default_factory=list)  # during the storm
    errors_after: list[str] = field(default_factory=list)
    live: list[tuple[float, int]] = field(default_factory=list)
    memory: hostile.Memory | None = None
    idle_mb: float = 0.0
    after_mb: float = 0.0
    redis: RedisMemory | None = None
    redis_baseline_mb: float = 0.0

    @property
    def lost(self) -> int:
        """Accepted and never finished: the users' predictions still queued, the collection's images not done
        or failed (not even recorded, if its reading stopped)."""
        owned = sum(
            count for statuses in self.owned.values() for status, count in statuses.items() if status == "queued"
        )
        return owned + self.images - self.progress.get("done", 0) - self.progress.get("failed", 0)


async def bomb_rounds(
    url: str, tokens: list[str], files: list[tuple[str, bytes]], until: asyncio.Future[Any]
) -> list[hostile.Outcome]:
    """Rounds of BOMBS_IN_FLIGHT bombs at once, a second apart: BOMB_ROUNDS, and more while `until` runs."""
    burst = [files[i % len(files)] for i in range(BOMBS_IN_FLIGHT)]
    outcomes = []
    for round_ in range(1000):
        if round_ >= BOMB_ROUNDS and until.done():
            break
        outcomes += await hostile.hostile_burst(url, tokens, burst)
        await asyncio.sleep(1)
    return outcomes


Files = list[tuple[str, bytes]]


def attack(url: str, flooder: str, bombers: list[str], sync: Files, async_: Files, bombs: Files) -> list[Any]:
    """The flood and the bombs, in a process of their own (see `run`): [sync answers, async answers, bombs']."""

    async def both() -> list[Any]:
        flood = asyncio.gather(
            hostile.hostile_burst(url, [flooder], sync), hostile.hostile_burst(url, [flooder], async_, wait=False)
        )
        bombed = await bomb_rounds(url, bombers, bombs, until=flood)
        return [*await flood, bombed]

    return asyncio.run(both())


async def final_statuses(url: str, token: str, drain: float) -> Counter[str]:
    """How many of a user's predictions (every one, through the API) are in each status, once none is
    queued or after `drain` seconds."""
    statuses: dict[str, str] = {}
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
        params: dict[str, str | int] = {"per_page": 100}
        while True:  # page after page by `before`: numbered pages reach back LIST_WINDOW items only
            response = await client.get("/api/predictions", params=params)
            response.raise_for_status()
            body = response.json()
            statuses |= {item["id"]: item["status"] for item in body["items"]}
            if body["next_before"] is None:
                break
            params["before"] = body["next_before"]
    queued = [prediction_id for prediction_id, status in statuses.items() if status == "queued"]
    return Counter((statuses | await chaos.outcome(url, token, queued, drain)).values())


async def collection_progress(client: httpx.AsyncClient, collection_id: str) -> tuple[str, dict[str, int]]:
    response = await client.get(f"/api/collections/{collection_id}", params={"per_page": 1})
    response.raise_for_status()
    body = response.json()
    return body["status"], body["progress"]


async def follow_collection(url: str, token: str, collection_id: str, figures: Figures, drain: float) -> None:
    """Until the collection is done, or `drain` seconds: when it was read, when done, its progress."""
    headers = {"Authorization": f"Bearer {token}"}
    answered = figures.started + figures.answered_s
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as client:
        while time.time() < answered + drain:
            try:
                status, figures.progress = await collection_progress(client, collection_id)
            except (httpx.HTTPError, KeyError, ValueError) as exc:
                say(f"  collection progress unavailable: {exc!r}")
                status = "reading"
            if status != "reading" and not figures.read_s:
                figures.read_s = time.time() - answered
                say(f"  archive read in {figures.read_s:.0f} s: {figures.progress}")
            if status == "done":
                figures.classified_s = time.time() - answered
                break
            await asyncio.sleep(2)
    figures.collection_finished = time.time()


async def run(
    url: str,
    redis_url: str,
    web_pid: int,
    workdir: Path,
    setup: str,
    images: int = COLLECTION_IMAGES,
    drain: float = 1800.0,
) -> Figures:
    """The phase, against a running system (its web process `web_pid`, its Redis `redis_url`)."""
    figures = Figures(setup, images)
    say(f"making a zip of {images} PNGs and the bombs")
    archive = await asyncio.to_thread(archive_of_pngs, images)
    figures.archive_bytes = len(archive)
    bomb_paths = await asyncio.to_thread(hostile_images.write_all, workdir / "bombs")
    bombs = [(path.name, path.read_bytes()) for path in bomb_paths.values()]
    flood_sync = [(f"s{i}.png", chaos.image(FLOOD_SEED + i)) for i in range(FLOOD_SYNC)]
    flood_async = [(f"a{i}.png", chaos.image(FLOOD_SEED + FLOOD_SYNC + i)) for i in range(FLOOD_ASYNC)]
    normal, flooder, collector, *bombers = [
        await hostile.register(url, f"{role}@load.example.com")
        for role in ("normal", "flooder", "collector", "bomber1", "bomber2")
    ]

    photos = iter(range(PHOTO_SEED, PHOTO_SEED + 1_000_000))
    figures.quiet = await hostile.normal_user(
        url, normal, [next(photos) for _ in range(3)], errors=figures.errors_quiet
    )
    memory = figures.memory = hostile.Memory(web_pid, interval=0.25)
    figures.idle_mb = memory.sample()[0] / 1024
    memory.reset_peak()
    redis_memory = figures.redis = RedisMemory(redis_url)
    figures.redis_baseline_mb = (await redis_memory.info())["used_memory"] / 2**20
    stop, storm_over = asyncio.Event(), asyncio.Event()
    samplers = [asyncio.create_task(memory.run(stop)), asyncio.create_task(redis_memory.run(stop))]
    probing = asyncio.create_task(hostile.probe_live(url, storm_over, every=0.25))
    # The flood's hundreds of uploads come from another process: sent from this one, their client's work
    # would delay the normal user's and the health check's requests, and be measured as the service's.
    attacker = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(attacker, int)  # started and ready

    say(f"the storm: a zip of {images} images ({len(archive) / 2**20:.1f} MB), {FLOOD_SYNC} + {FLOOD_ASYNC} flood")
    figures.started, cpu_before, client_before = time.time(), own_cpu(web_pid), own_cpu(os.getpid())
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        response = await client.post(
            "/api/collections",
            headers={"Authorization": f"Bearer {collector}"},
            files={"archive": ("photos.zip", archive, "application/zip")},
            data={"name": "hostile load"},
        )
    figures.answered_s = time.time() - figures.started
    if response.status_code != 202:
        raise RuntimeError(f"the archive got {response.status_code}: {response.text[:500]}")
    collection_id = response.json()["id"]
    say(f"  202 in {figures.answered_s:.2f} s")
    following = asyncio.create_task(follow_collection(url, collector, collection_id, figures, drain))
    storm = loop.run_in_executor(attacker, attack, url, flooder, bombers, flood_sync, flood_async, bombs)
    storm.add_done_callback(lambda _: storm_over.set())
    figures.storm = await hostile.normal_user(url, normal, photos, until=storm_over, errors=figures.errors)
    sync, async_, figures.bombs = await storm
    attacker.shutdown()
    figures.flood = [*sync, *async_]
    figures.storm_ended, figures.storm_cpu_s = time.time(), own_cpu(web_pid) - cpu_before
    figures.client_cpu_s = own_cpu(os.getpid()) - client_before
    figures.live = await probing
    answers = Counter(outcome.status for outcome in figures.flood)
    say(f"  storm over in {figures.storm_ended - figures.started:.0f} s; flood answers {dict(answers)}")

    # Then the normal user goes on (a photo a second) while the flood's accepted work and the collection finish.
    collection_done = asyncio.Event()
    following.add_done_callback(lambda _: collection_done.set())
    later = asyncio.create_task(
        hostile.normal_user(url, normal, photos, until=collection_done, errors=figures.errors_after, pause=1.0)
    )
    ids = [outcome.prediction_id for outcome in figures.flood if outcome.prediction_id]
    figures.flood_statuses = await chaos.outcome(url, flooder, ids, drain)
    figures.flood_finished = time.time()
    say(f"  flood finished: {dict(Counter(figures.flood_statuses.values()))}")
    await following
    figures.after = await later
    say(f"  collection finished: {figures.progress}")
    for role, token in (("flooder", flooder), ("normal user", normal)):
        figures.owned[role] = await final_statuses(url, token, drain=300)
    say(f"  every prediction of the flooder and the normal user: {figures.owned}")
    stop.set()
    await asyncio.gather(*samplers)
    figures.after_mb = memory.sample()[0] / 1024
    return figures


# ---- the report ----------------------------------------------------------------------------------------


def seconds(values: list[float]) -> str:
    """p50 / p95 / max of latencies, and how many."""
    if not values:
        return "none answered"
    p95 = statistics.quantiles(values, n=20, method="inclusive")[-1] if len(values) > 1 else values[0]
    return f"{statistics.median(values):.2f} / {p95:.2f} / {max(values):.2f} s ({len(values)})"


def errors(found: list[str]) -> str:
    """How many, and the first few ("<status>: <detail>")."""
    return f"{len(found)}: " + "; ".join(found[:3]) if found else "0"


def statuses(counts: Counter[Any]) -> str:
    return ", ".join(f"{status} ({count})" for status, count in sorted(counts.items(), key=str)) or "none"


def mb(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} MB"


def met(ok: bool) -> str:
    return "met" if ok else "**missed**"


def report(figures: Figures, machine: str, command: str, heading: str = SECTION) -> str:
    memory, redis = figures.memory, figures.redis
    assert memory is not None and redis is not None
    storm = (figures.started, figures.storm_ended)
    alone = (figures.flood_finished, figures.collection_finished)
    alone_peak = redis.peak_mb(*alone) if figures.flood_finished < figures.collection_finished else None
    whole_peak = redis.peak_mb() or 0.0
    flood_sync = [o for o in figures.flood if o.name.startswith("s")]
    flood_async = [o for o in figures.flood if o.name.startswith("a")]
    live_failures = sum(1 for _, status in figures.live if status != 200)
    progress = figures.progress
    done_in = f"done in {figures.classified_s:.0f} s" if figures.classified_s else "**not done** by the deadline"
    storm_s = figures.storm_ended - figures.started

    def flood_row(kind: str, outcomes: list[hostile.Outcome]) -> str:
        finished = Counter(figures.flood_statuses.get(o.prediction_id or "", "") for o in outcomes if o.prediction_id)
        lost = sum(count for status, count in finished.items() if status not in ("done", "failed"))
        slowest = max(o.seconds for o in outcomes)
        return (
            f"| flood, {kind} | {len(outcomes)} at once | {statuses(Counter(o.status for o in outcomes))}; "
            f"slowest answer {slowest:.1f} s | {finished['done']} | {finished['failed']} | **{lost}** |"
        )

    bomb_answers = Counter(o.status for o in figures.bombs)
    lines = [
        heading,
        "",
        f"{command}, on {time.strftime('%Y-%m-%d')} ({machine}): {figures.setup} All at once: one user sends a "
        f"zip of {figures.images:,} distinct 96x96 PNGs ({figures.archive_bytes / 2**20:.1f} MB); another floods "
        f"with {FLOOD_SYNC} synchronous and {FLOOD_ASYNC} async (`wait=false`) uploads in flight together; two "
        f"more send rounds of {BOMBS_IN_FLIGHT} decode bombs (`tests/hostile.py`'s images refused from their "
        "headers) until the flood is answered; and a normal user uploads a 12 MP phone photo, waits for its "
        "result and uploads the next. Then the normal user goes on, a photo a second, until the collection is "
        "done. Memory is sampled every 0.25 s (the web process's peak is the kernel's high-water mark), Redis's "
        "`used_memory` every 0.2 s. Timing on this shared 2-core machine is noisy: other test runs may have "
        "been going on at the same time.",
        "",
        "| the normal user | p50 / p95 / max (answered) | errors |",
        "| --- | ---: | --- |",
        f"| quiet, before | {seconds(figures.quiet)} | {errors(figures.errors_quiet)} |",
        f"| during the flood and the bombs ({storm_s:.0f} s) | {seconds(figures.storm)} | {errors(figures.errors)} |",
        f"| while the collection goes on, a photo a second | {seconds(figures.after)} "
        f"| {errors(figures.errors_after)} |",
        "",
        "| work | sent | answers | done | failed | lost |",
        "| --- | ---: | --- | ---: | ---: | ---: |",
        flood_row("synchronous", flood_sync),
        flood_row("async", flood_async),
        f"| decode bombs | {len(figures.bombs)} | {statuses(bomb_answers)}; slowest answer "
        f"{max(o.seconds for o in figures.bombs):.1f} s | - | - | - |",
        f"| the collection | {figures.images:,} images | 202 in **{figures.answered_s:.2f} s**; read in "
        f"{figures.read_s:.0f} s, {done_in} | {progress.get('done', 0)} | "
        f"{progress.get('failed', 0)} | **{figures.images - progress.get('done', 0) - progress.get('failed', 0)}** |",
        "",
        "| memory | idle / before | peak | after |",
        "| --- | ---: | ---: | ---: |",
        f"| web process, resident | {figures.idle_mb:.0f} MB | **{memory.peak_mb:.0f} MB** "
        f"| {figures.after_mb:.0f} MB |",
        f"| its decode processes, resident (together) | - | {memory.children_peak_mb:.0f} MB | - |",
        f"| Redis `used_memory`, during the flood and the bombs | {figures.redis_baseline_mb:.1f} MB "
        f"| {mb(redis.peak_mb(*storm))} | - |",
        f"| Redis `used_memory`, the collection classified alone (after the flood's work finished) | "
        f"{figures.redis_baseline_mb:.1f} MB | **{mb(alone_peak)}** | - |",
        f"| Redis `used_memory`, the whole phase / INFO `used_memory_peak` (since Redis started) | "
        f"{figures.redis_baseline_mb:.1f} MB | {whole_peak:.1f} / {redis.peak_since_start / 2**20:.1f} MB | - |",
        f"| Redis resident (`used_memory_rss`) | - | {mb(redis.peak_mb(rss=True))} | - |",
        "",
        "Counted at the end through the API (`GET /api/predictions`, every page): "
        + "; ".join(f"the {role}'s {sum(c.values())} predictions: {statuses(c)}" for role, c in figures.owned.items())
        + f"; the collection's progress: {progress}.",
        "",
        f"`/health/live`, asked every 0.25 s during the flood and the bombs: {len(figures.live) - live_failures} of "
        f"{len(figures.live)} answered, slowest {max((s for s, _ in figures.live), default=0) * 1000:.0f} ms. The "
        f"web process used {figures.storm_cpu_s:.1f} s of CPU in those {storm_s:.0f} s "
        f"({100 * figures.storm_cpu_s / storm_s:.0f}% of one core); the process measuring the normal user and the "
        f"health check (the flood and the bombs come from another) {figures.client_cpu_s:.1f} s.",
        "",
        f"Targets: lost = 0 ({met(figures.lost == 0)}: {figures.lost}); Redis under {REDIS_TARGET_MB} MB while "
        f"one {figures.images:,}-image collection is classified ({met((alone_peak or whole_peak) < REDIS_TARGET_MB)}"
        f": {mb(alone_peak)} alone, {whole_peak:.1f} MB at the worst of the whole phase); `POST /api/collections` "
        f"answering 202 within {ANSWER_TARGET_S:.0f} s ({met(figures.answered_s < ANSWER_TARGET_S)}: "
        f"{figures.answered_s:.2f} s).",
        "",
    ]
    return "\n".join(lines)


# ---- on its own ----------------------------------------------------------------------------------------


async def main_async(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="hostile-load-"))
    say(f"work files and logs in {workdir}")
    async with hostile.own_system(workdir, args.postgres) as system:
        setup = (
            f"the web app, one worker (the stand-in model), a Redis server and a {system.database} database of its "
            "own, with the default settings."
        )
        figures = await asyncio.wait_for(
            run(system.url, system.redis_url, system.web.pid, workdir, setup, args.images, args.drain), args.limit
        )
    machine = await asyncio.to_thread(chaos.machine)
    hostile.publish(report(figures, machine, "`python bench/hostile_load.py`", ALONE_SECTION), args)
    if figures.lost:
        sys.exit(1)


def add_arguments(parser: argparse.ArgumentParser, limit: str) -> None:
    """This phase's arguments, here and in bench/chaos.py: the archive's size, how long to wait."""
    parser.add_argument("--images", type=int, default=COLLECTION_IMAGES, help="images in the hostile load's archive")
    parser.add_argument("--drain", type=float, default=1800, help="the most seconds for accepted work to finish")
    parser.add_argument(limit, type=float, default=2700, help="stop the hostile load after this many seconds")


def main() -> None:
    exit_on_sigterm()
    parser = hostile.arguments(__doc__)
    add_arguments(parser, "--limit")
    args: Any = parser.parse_args()
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
