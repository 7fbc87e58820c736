"""The web side's CPU per prediction: the web process and its decode pool, from the operating system's
counters, split by stage from the app's own timers (`app_web_stage_cpu_seconds` in /metrics), and cross-
checked with a sampling profiler (py-spy).

    python bench/web_cost.py [--web-images 400] [--web-concurrency 8] [--web-large 30] [--web-rounds 3]
                             [--web-collection 300] [--baseline REV]

Workers run the stand-in model, so the model costs nothing and the machine is the web side's. With
`--baseline REV` the same load also runs against that commit of the code (a git worktree), started beside
this code's system: the two take turns, round after round, so the figures before and after a change are
measured in one run, on one machine, through the same drifts of its speed. With `--web-collection N`,
each round also sends its share of N photos as one collection (`POST /api/collections`) and waits until it
is classified: the web side's CPU per image read from an archive and fed to the workers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.images import distinct_photo, make_image  # noqa: E402
from bench.procs import exit_on_sigterm, own_cpu, tree_cpu  # noqa: E402
from bench.run import PY, System, database, database_cpu, say  # noqa: E402

# The code before issue 15's cuts to the web path: `make bench` measures it beside this code.
BEFORE = "b1df8f1"
PHOTO = "640x480"
COLLECTION = "640x480 in a collection"
# Requests that decode nothing, beside the uploads: what any request costs the web process (the server, the
# framework and its middleware), and a signed-in one. FLOOR_REQUESTS of each per round.
FLOOR = {"any request": "/health/live", "signed in": "/api/users/me"}
FLOOR_REQUESTS = 400
STAGE = re.compile(r'^app_web_stage_cpu_seconds_(sum|count)\{stage="(\w+)"\} (\S+)$', re.M)
# py-spy's samples, by stage: the first stage (in this order) that any frame of the stack names. Sign-in
# first: its user lookup is a database call, but the stage is sign-in's.
PROFILE_STAGES = [
    ("auth", ("sessions.py", "jwt")),
    ("hash", ("sha256", "hexdigest")),
    ("storage", ("files.py",)),  # in the decode process, which stores the original once it passed
    ("decode", ("images.py", "sandbox.py", "PIL", "cv2", "pebble", "multiprocessing", "pickle")),
    ("waiting", ("results.py",)),
    ("database", ("tortoise", "asyncpg", "aiosqlite", "pypika", "sqlite3", "usage.py", "quotas.py")),
    ("redis", ("redis", "producer.py")),
    ("parsing", ("multipart", "upload_file", "data_received", "on_body")),
    ("rendering", ("msgspec", "encode_json", "to_asgi_response", "ASGIResponse", "schemas.py", "jinja")),
]


@dataclass
class Cost:
    """What one system spent on its uploads of one kind of photo, round by round."""

    label: str
    images: int = 0
    seconds: float = 0.0  # spent uploading them, all rounds together
    rounds_ms: list[float] = field(default_factory=list)  # CPU per image in each round
    web_rounds_ms: list[float] = field(default_factory=list)  # of which the web process's (not its decode pool's)
    stages_ms: dict[str, float] = field(default_factory=dict)  # per upload, from the app's timers
    profile: dict[str, float] = field(default_factory=dict)  # share of py-spy's samples
    redis_s: float = 0.0  # the Redis server's CPU
    calls: Counter[str] = field(default_factory=Counter)  # Redis commands
    # Between the readings of the Redis server's counters, all rounds together: they count the whole
    # server's commands, background work's in that time too (the feeder's idle rounds: app/feeder.py).
    counted_s: float = 0.0
    database_s: float = 0.0  # PostgreSQL's CPU (0 on SQLite: in the web process)
    floor_ms: dict[str, list[float]] = field(default_factory=dict)  # FLOOR's cost per request, round by round

    @property
    def ms_per_image(self) -> float:
        """The median of the rounds: the machine's speed drifts, and the systems take turns."""
        return statistics.median(self.rounds_ms) if self.rounds_ms else 0.0

    @property
    def web_ms_per_image(self) -> float:
        """The web process's part: one event loop, so one core's worth of it at most, whatever the cores."""
        return statistics.median(self.web_rounds_ms) if self.web_rounds_ms else 0.0

    @property
    def redis_ms(self) -> float:
        return 1000 * self.redis_s / self.images if self.images else 0.0

    @property
    def redis_calls(self) -> dict[str, float]:
        return {name: n / self.images for name, n in self.calls.items()} if self.images else {}

    @property
    def database_ms(self) -> float:
        return 1000 * self.database_s / self.images if self.images else 0.0


def stage_sums(text: str) -> dict[str, tuple[float, float]]:
    found: dict[str, list[float]] = {}
    for kind, name, value in STAGE.findall(text):
        found.setdefault(name, [0.0, 0.0])[0 if kind == "count" else 1] = float(value)
    return {name: (count, total) for name, (count, total) in found.items()}


def sign_up(url: str) -> str:
    """A new account's token (before measuring: hashing its password is deliberately costly)."""
    import httpx

    body = {"email": f"cost-{time.time_ns()}@example.com", "password": "web-cost-benchmark"}
    with httpx.Client(base_url=url, timeout=60) as client:
        client.post("/api/auth/register", json=body).raise_for_status()
        response = client.post("/api/auth/login", json=body)
        response.raise_for_status()
        return str(response.json()["access_token"])


def signed_in(url: str, token: str) -> Any:
    """An HTTP client of the system at `url`, signed in with `token`."""
    import httpx

    return httpx.AsyncClient(base_url=url, timeout=120, headers={"Authorization": f"Bearer {token}"})


async def in_turns(url: str, token: str, count: int, concurrency: int, send: Callable[..., Awaitable[Any]]) -> float:
    """`send(client, i)` for i in range(count), `concurrency` at a time, each answered 200; seconds taken."""
    async with signed_in(url, token) as client:
        queue = list(range(count))
        started = time.perf_counter()

        async def user() -> None:
            while queue:
                i = queue.pop()
                response = await send(client, i)
                if response.status_code != 200:
                    raise RuntimeError(f"request {i}: {response.status_code} {response.text[:200]}")

        await asyncio.gather(*(user() for _ in range(concurrency)))
        return time.perf_counter() - started


async def collect_all(url: str, token: str, images: list[bytes]) -> float:
    """Classify every image as one collection, polled until done; seconds taken."""
    async with signed_in(url, token) as client:
        started = time.perf_counter()
        files = [("files", (f"{i}.jpg", data, "image/jpeg")) for i, data in enumerate(images)]
        response = await client.post("/api/collections", files=files)
        if response.status_code != 202:
            raise RuntimeError(f"collection: {response.status_code} {response.text[:200]}")
        where = response.headers["Location"]
        while True:  # polled over HTTP, as a client does
            body = (await client.get(where, params={"per_page": 1})).json()
            if body["status"] == "done":
                break
            await asyncio.sleep(0.25)
        if body["progress"]["done"] != len(images):
            raise RuntimeError(f"collection: {body['progress']}")
        return time.perf_counter() - started


async def upload_all(url: str, token: str, images: list[bytes], concurrency: int) -> float:
    """Classify every image, `concurrency` at a time; seconds taken."""

    def upload(client: Any, i: int) -> Awaitable[Any]:
        return client.post("/api/predictions", files={"file": (f"{i}.jpg", images[i], "image/jpeg")})

    return await in_turns(url, token, len(images), concurrency, upload)


def measure_floor(subject: Subject, concurrency: int) -> None:
    """What a request that decodes nothing costs the web process (FLOOR), in this round."""
    floor = subject.costs[PHOTO].floor_ms
    for name, path in FLOOR.items():
        get = functools.partial(_get, path)
        before = tree_cpu(subject.web)
        asyncio.run(in_turns(subject.system.url, subject.token, FLOOR_REQUESTS, concurrency, get))
        floor.setdefault(name, []).append(1000 * (tree_cpu(subject.web) - before) / FLOOR_REQUESTS)


def _get(path: str, client: Any, _: int) -> Awaitable[Any]:
    return client.get(path)


def metrics_text(url: str) -> str:
    import httpx

    return httpx.get(f"{url}/metrics", timeout=30).text


def profile_shares(raw: Path) -> dict[str, float]:
    """py-spy's samples (raw, collapsed stacks), by stage (PROFILE_STAGES)."""
    counts: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        stage = next((s for s, words in PROFILE_STAGES if any(w in f for f in frames for w in words)), "other")
        counts[stage] += int(n)
    total = sum(counts.values()) or 1
    return {stage: counts[stage] / total for stage in counts}


@contextmanager
def profiler(pid: int, seconds: float, out: Path) -> Iterator[None]:
    """py-spy sampling `pid` and its decode processes while the block runs (if py-spy is installed)."""
    spy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
    if not Path(spy).exists():
        yield
        return
    command = [spy, "record", "-p", str(pid), "--subprocesses", "--nonblocking", "-r", "250"]
    command += ["-d", str(int(seconds) + 1), "-f", "raw", "-o", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        process.send_signal(2)  # py-spy writes what it has on SIGINT
        process.wait(timeout=60)


def redis_use(system: System) -> tuple[float, dict[str, int]]:
    """The Redis server's CPU seconds so far, and its calls by command (but the INFO that asks)."""
    stats = system.redis_server.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}
    calls.pop("info", None)
    return tree_cpu(system.redis_server.pid), calls


@dataclass
class Subject:
    """One system under measurement: its photos (a share for each round, and the split's) and their costs."""

    system: System
    workdir: Path
    token: str
    photos: dict[str, list[bytes]]  # by kind: "640x480", "12 MP"
    split: dict[str, list[bytes]]
    costs: dict[str, Cost]

    @property
    def web(self) -> int:
        return self.system.processes[0].pid


def concurrency_of(kind: str, concurrency: int) -> int:
    return concurrency if kind == PHOTO else max(1, concurrency // 4)


def measure_round(subject: Subject, kind: str, images: list[bytes], concurrency: int, profile: bool) -> None:
    """CPU per image of one round's uploads, `concurrency` at a time, from the OS's counters (and py-spy's
    samples, in the first round)."""
    system, cost = subject.system, subject.costs[kind]
    raw = subject.workdir / f"profile-{cost.label.replace(' ', '-').replace(',', '')}.txt"
    on_postgres = system.env["DATABASE_URL"].startswith("postgres")
    web = subject.web
    before, own_before = tree_cpu(web), own_cpu(web)
    counting = time.monotonic()
    (redis_before, calls_before), db_before = redis_use(system), database_cpu(on_postgres)
    with profiler(web, 600, raw) if profile else contextlib.nullcontext():
        if kind == COLLECTION:
            seconds = asyncio.run(collect_all(system.url, subject.token, images))
        else:
            seconds = asyncio.run(upload_all(system.url, subject.token, images, concurrency))
    spent, own = tree_cpu(web) - before, own_cpu(web) - own_before
    redis_after, calls_after = redis_use(system)
    cost.counted_s += time.monotonic() - counting
    cost.images, cost.seconds = cost.images + len(images), cost.seconds + seconds
    cost.rounds_ms.append(1000 * spent / len(images))
    cost.web_rounds_ms.append(1000 * own / len(images))
    cost.redis_s += redis_after - redis_before
    cost.calls.update({k: v - calls_before.get(k, 0) for k, v in calls_after.items()})
    cost.database_s += database_cpu(on_postgres) - db_before
    if profile and raw.exists():
        cost.profile = profile_shares(raw)


def measure_split(subject: Subject, kind: str) -> None:
    """The split by stage, one upload at a time: a stage's timer counts the whole process, so with several
    uploads at once it would count the others' work too. Not for a collection: its images are read in the
    background, outside any upload request."""
    if kind == COLLECTION:
        return
    url, cost = subject.system.url, subject.costs[kind]
    counters = stage_sums(metrics_text(url))
    asyncio.run(upload_all(url, subject.token, subject.split[kind], 1))
    for name, (count, total) in stage_sums(metrics_text(url)).items():
        done = count - counters.get(name, (0.0, 0.0))[0]
        cost.stages_ms[name] = 1000 * (total - counters.get(name, (0.0, 0.0))[1]) / done if done else 0.0


@contextmanager
def worktree(rev: str, workdir: Path) -> Iterator[Path]:
    """A checkout of `rev` in `workdir` while the block runs, removed after (from git's list as well)."""
    path = workdir / f"baseline-{rev[:8]}"
    git = ["git", "-C", str(ROOT), "worktree"]
    subprocess.run([*git, "add", "--detach", str(path), rev], check=True, capture_output=True)
    try:
        yield path
    finally:
        subprocess.run([*git, "remove", "--force", str(path)], check=True, capture_output=True)


def run(args: argparse.Namespace, workdir: Path) -> list[Cost]:
    """The baseline (a checkout removed after), if any, then this code."""
    with contextlib.ExitStack() as stack:
        systems = []
        if args.baseline:
            systems.append((f"baseline {args.baseline[:8]}", stack.enter_context(worktree(args.baseline, workdir))))
        systems.append(("this code", ROOT))
        return measure_all(args, workdir, systems)


@contextmanager
def started(args: argparse.Namespace, workdir: Path, n: int, label: str, root: Path) -> Iterator[Subject]:
    """A system of the code at `root` in its own directory, with its own Redis (no result cache carried
    over) and its own database, signed up and warmed up; its own photos: new files of one photo (new
    hashes, the same decode: see bench.images.distinct_photo)."""
    salt = (time.time_ns() % 2**40 << 20) + (n << 18)
    photos = {PHOTO: [distinct_photo(salt + i) for i in range(args.predictions)]}
    if args.large:
        photos["12 MP"] = [distinct_photo(salt + 2**17 + i, size=(4000, 3000)) for i in range(args.large)]
    if args.collection:
        photos[COLLECTION] = [distinct_photo(salt + 2**16 + i) for i in range(args.collection)]
    (own := workdir / f"system-{n}").mkdir()
    with database(os.environ.get("DATABASE_URL"), own) as database_url:
        env = {"INFERENCE_BACKEND": "stand-in", "WEB_PROCESSES": "1"}
        system = System(own, database_url, 1, pinned=False, backend="stand-in", extra_env=env, root=root)
        try:
            token = sign_up(system.url)
            warm_up = [make_image(i + 2**40 + (n << 10)) for i in range(20)]
            asyncio.run(upload_all(system.url, token, warm_up, args.concurrency))
            # A fifth (at least 10, at most half) for the split one at a time, the rest shared out in rounds.
            split = {
                kind: [] if kind == COLLECTION else images[: min(max(10, len(images) // 5), len(images) // 2)]
                for kind, images in photos.items()
            }
            rest = {kind: images[len(split[kind]) :] for kind, images in photos.items()}
            costs = {kind: Cost(f"{label}, {kind}") for kind in photos}
            yield Subject(system, own, token, rest, split, costs)
        finally:
            system.stop()


def measure_all(args: argparse.Namespace, workdir: Path, systems: list[tuple[str, Path]]) -> list[Cost]:
    """Every system started at once, then measured in turns, round after round (the machine's speed drifts
    over minutes: turns give each system the same drift), then split by stage."""
    with contextlib.ExitStack() as stack:
        subjects = [stack.enter_context(started(args, workdir, n, *system)) for n, system in enumerate(systems)]
        for round_ in range(args.rounds):
            for subject in subjects:
                for kind, images in subject.photos.items():
                    share = images[round_ :: args.rounds]
                    measure_round(subject, kind, share, concurrency_of(kind, args.concurrency), profile=round_ == 0)
                measure_floor(subject, args.concurrency)
        for subject in subjects:
            for kind in subject.photos:
                measure_split(subject, kind)
                cost = subject.costs[kind]
                rounds = ", ".join(f"{ms:.1f}" for ms in cost.rounds_ms)
                rate = cost.images / cost.seconds if cost.seconds else 0.0
                say(
                    f"  {cost.label}: {cost.ms_per_image:.1f} ms of web CPU per image (median of {rounds});"
                    f" {rate:.0f} images/s, {concurrency_of(kind, args.concurrency)} at a time"
                )
        return [cost for subject in subjects for cost in subject.costs.values()]


def table(costs: list[Cost]) -> str:
    from app.stages import STAGES

    head = "| system, photo | ms of CPU per image | of which the web process | " + " | ".join(STAGES) + " |"
    lines = [head, "| --- | ---: | ---: |" + " ---: |" * len(STAGES)]
    for cost in costs:
        stages = " | ".join(f"{cost.stages_ms[s]:.2f}" if s in cost.stages_ms else "-" for s in STAGES)
        rounds = "/".join(f"{ms:.1f}" for ms in cost.rounds_ms)
        lines.append(
            f"| {cost.label} | **{cost.ms_per_image:.1f}** ({rounds}) | {cost.web_ms_per_image:.1f} | {stages} |"
        )
    lines += floor_table(costs)
    lines += ["", "Beside the web side, per image (the whole upload, the worker's share included):", ""]
    lines += [
        "| system, photo | Redis server CPU ms | Redis commands | PostgreSQL CPU ms |",
        "| --- | ---: | --- | ---: |",
    ]
    for cost in costs:
        commands = ", ".join(f"{name} {n:.1f}" for name, n in sorted(cost.redis_calls.items()) if n >= 0.05)
        total = sum(cost.redis_calls.values())
        lines.append(f"| {cost.label} | {cost.redis_ms:.2f} | {total:.1f}: {commands} | {cost.database_ms:.2f} |")
    lines.append("")
    lines.append("py-spy's samples by stage (share of the web process's and its decode pool's samples):")
    lines.append("")
    lines.append("| system, photo | samples | " + " | ".join(STAGES) + " |")
    lines.append("| --- | ---: |" + " ---: |" * len(STAGES))
    for cost in costs:
        shares = " | ".join(f"{100 * cost.profile.get(s, 0.0):.0f}%" for s in STAGES)
        lines.append(f"| {cost.label} | {'yes' if cost.profile else 'no py-spy'} | {shares} |")
    return "\n".join(lines)


def floor_table(costs: list[Cost]) -> list[str]:
    """FLOOR's cost per request, beside the uploads' (the median of the rounds)."""
    measured = [cost for cost in costs if cost.floor_ms]
    if not measured:
        return []
    lines = ["", "A request that decodes nothing, in the same rounds: ms of the web process's CPU per request.", ""]
    lines += ["| system | " + " | ".join(f"{name} (`GET {path}`)" for name, path in FLOOR.items()) + " |"]
    lines += ["| --- |" + " ---: |" * len(FLOOR)]
    for cost in measured:
        medians = " | ".join(f"{statistics.median(cost.floor_ms.get(name, [0.0])):.2f}" for name in FLOOR)
        lines.append(f"| {cost.label.removesuffix(', ' + PHOTO)} | {medians} |")
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--web-images", type=int, default=400, help="640x480 photos for the web CPU figures")
    parser.add_argument("--web-large", type=int, default=30, help="12-megapixel photos (0: none)")
    parser.add_argument("--web-concurrency", type=int, default=8, help="uploads at a time")
    parser.add_argument("--web-rounds", type=int, default=3, help="turns each system takes (the median is reported)")
    parser.add_argument("--web-collection", type=int, default=300, help="640x480 photos sent as collections (0: none)")
    parser.add_argument("--baseline", default=BEFORE, help="a commit to measure first, in a git worktree ('': none)")


def options(args: argparse.Namespace) -> argparse.Namespace:
    """This bench's settings, out of `make bench`'s arguments (`--quick`: a few images)."""
    quick = getattr(args, "quick", False)
    return argparse.Namespace(
        predictions=60 if quick else args.web_images,
        large=4 if quick else args.web_large,
        concurrency=args.web_concurrency,
        rounds=1 if quick else args.web_rounds,
        collection=20 if quick else args.web_collection,
        baseline=args.baseline,
    )


def report(costs: list[Cost]) -> str:
    rows = {c.label: c for c in costs}
    ratio = [
        f"{rows[before].ms_per_image / rows[after].ms_per_image:.1f}x less for {after.split(', ')[1]}"
        for before in rows
        if before.startswith("baseline") and (after := "this code, " + before.split(", ")[1]) in rows
    ]
    return "\n".join(
        [
            "`bench/web_cost.py`: uploads through the API, 8 at a time, to the web app with a stand-in model (the"
            " machine is the web side's); CPU of the web process and its decode pool from the operating system's"
            " counters, and of the web process alone (its event loop does its share on one core at most). The"
            " stages are the app's own timers (`app_web_stage_cpu_seconds` in /metrics), measured one"
            " upload at a time so that no stage counts another upload's work; py-spy sampled the same processes"
            " meanwhile (the first round). The baseline is the code before these cuts, measured in the same run:"
            " both systems run side by side and take turns, round after round, and each figure is the median of"
            " its rounds (the machine's speed drifts over minutes)"
            + (f" ({'; '.join(ratio)})." if ratio else ".")
            + f" The rows '{COLLECTION}' send each round's share as one collection (`POST /api/collections`)"
            " and wait until it is classified: its images are read and fed in the background, outside any"
            " upload request, so no stage timer counts them ('-'; '-' too where the code has no such timers).",
            "",
            table(costs),
        ]
    )


def main() -> None:
    exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = options(parser.parse_args())
    workdir = Path(tempfile.mkdtemp(prefix="web-cost-"))
    say(f"work files and logs in {workdir}")
    print(report(run(args, workdir)))


if __name__ == "__main__":
    main()
