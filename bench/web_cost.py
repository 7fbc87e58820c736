"""The web side's CPU per prediction: the web process and its decode pool, from the operating system's
counters, split by stage from the app's own timers (`app_web_stage_cpu_seconds` in /metrics), and cross-
checked with a sampling profiler (py-spy).

    python bench/web_cost.py [--web-images 400] [--web-concurrency 8] [--web-large 30] [--baseline REV]

Workers run the stand-in model, so the model costs nothing and the machine is the web side's. With
`--baseline REV` the same load first runs against that commit of the code (a git worktree), so the
figures before and after a change are measured in one run, on one machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.images import distinct_photo, make_image  # noqa: E402
from bench.procs import tree_cpu  # noqa: E402
from bench.run import PY, System, database, database_cpu, say  # noqa: E402

# The code before issue 15's cuts to the web path: `make bench` measures it beside this code.
BEFORE = "b1df8f1"
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
    """What one system spent on a batch of uploads."""

    label: str
    images: int
    seconds: float = 0.0
    cpu_s: float = 0.0  # the web process and its descendants (the decode pool)
    stages_ms: dict[str, float] = field(default_factory=dict)  # per upload, from the app's timers
    profile: dict[str, float] = field(default_factory=dict)  # share of py-spy's samples
    redis_ms: float = 0.0  # the Redis server's CPU per image
    redis_calls: dict[str, float] = field(default_factory=dict)  # Redis commands per image
    database_ms: float = 0.0  # PostgreSQL's CPU per image (0 on SQLite: in the web process)

    @property
    def ms_per_image(self) -> float:
        return 1000 * self.cpu_s / self.images if self.images else 0.0


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


async def upload_all(url: str, token: str, images: list[bytes], concurrency: int) -> float:
    """Classify every image, `concurrency` at a time; seconds taken."""
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=120, headers={"Authorization": f"Bearer {token}"}) as client:
        queue = list(enumerate(images))
        started = time.perf_counter()

        async def user() -> None:
            while queue:
                i, data = queue.pop()
                response = await client.post("/api/predictions", files={"file": (f"{i}.jpg", data, "image/jpeg")})
                if response.status_code != 200:
                    raise RuntimeError(f"upload {i}: {response.status_code} {response.text[:200]}")

        await asyncio.gather(*(user() for _ in range(concurrency)))
        return time.perf_counter() - started


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


def measure(system: System, label: str, images: list[bytes], concurrency: int, workdir: Path) -> Cost:
    """CPU per image with `concurrency` uploads at a time (from the OS's counters, profiled with py-spy),
    then the split by stage one upload at a time (a stage's timer counts the whole process, so with
    several uploads at once it would count the others' work too)."""
    one_by_one = min(max(10, len(images) // 5), len(images) // 2)
    split, images = images[:one_by_one], images[one_by_one:]
    web, token = system.processes[0].pid, sign_up(system.url)
    asyncio.run(upload_all(system.url, token, [make_image(i + 2**40) for i in range(20)], concurrency))  # warm up
    cost = Cost(label, len(images))
    raw = workdir / f"profile-{label.replace(' ', '-').replace(',', '')}.txt"
    on_postgres = system.env["DATABASE_URL"].startswith("postgres")
    before, (redis_before, calls_before), db_before = tree_cpu(web), redis_use(system), database_cpu(on_postgres)
    with profiler(web, 600, raw):
        cost.seconds = asyncio.run(upload_all(system.url, token, images, concurrency))
    cost.cpu_s = tree_cpu(web) - before
    redis_after, calls_after = redis_use(system)
    cost.redis_ms = 1000 * (redis_after - redis_before) / len(images)
    cost.redis_calls = {k: (v - calls_before.get(k, 0)) / len(images) for k, v in calls_after.items()}
    cost.database_ms = 1000 * (database_cpu(on_postgres) - db_before) / len(images)
    if raw.exists():
        cost.profile = profile_shares(raw)
    counters = stage_sums(metrics_text(system.url))
    asyncio.run(upload_all(system.url, token, split, 1))
    for name, (count, total) in stage_sums(metrics_text(system.url)).items():
        done = count - counters.get(name, (0.0, 0.0))[0]
        cost.stages_ms[name] = 1000 * (total - counters.get(name, (0.0, 0.0))[1]) / done if done else 0.0
    say(f"  {label}: {cost.ms_per_image:.1f} ms of web CPU per image ({len(images) / cost.seconds:.0f} images/s)")
    return cost


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


def measure_all(args: argparse.Namespace, workdir: Path, systems: list[tuple[str, Path]]) -> list[Cost]:
    """Each system in its own directory (its own Redis: no result cache carried over) with its own images:
    new files of one photo (new hashes, the same decode: see bench.images.distinct_photo); one database."""
    costs = []
    with database(os.environ.get("DATABASE_URL"), workdir) as database_url:
        for n, (label, root) in enumerate(systems):
            say(f"{label}: {args.predictions} photos of 640x480, {args.large} of 12 MP, {args.concurrency} at a time")
            salt = (time.time_ns() % 2**40 << 20) + (n << 18)
            small = [distinct_photo(salt + i) for i in range(args.predictions)]
            large = [distinct_photo(salt + 2**17 + i, size=(4000, 3000)) for i in range(args.large)]
            env = {"INFERENCE_BACKEND": "stand-in", "WEB_PROCESSES": "1"}
            (own := workdir / f"system-{n}").mkdir()
            system = System(own, database_url, 1, pinned=False, backend="stand-in", extra_env=env, root=root)
            try:
                costs.append(measure(system, f"{label}, 640x480", small, args.concurrency, own))
                if large:
                    costs.append(measure(system, f"{label}, 12 MP", large, max(1, args.concurrency // 4), own))
            finally:
                system.stop()
    return costs


def table(costs: list[Cost]) -> str:
    from app.stages import STAGES

    head = "| system, photo | ms of CPU per image | " + " | ".join(STAGES) + " |"
    lines = [head, "| --- | ---: |" + " ---: |" * len(STAGES)]
    for cost in costs:
        stages = " | ".join(f"{cost.stages_ms.get(s, 0.0):.2f}" for s in STAGES)
        lines.append(f"| {cost.label} | **{cost.ms_per_image:.1f}** | {stages} |")
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
    lines.append(head.replace("ms of CPU per image", "samples"))
    lines.append("| --- | ---: |" + " ---: |" * len(STAGES))
    for cost in costs:
        shares = " | ".join(f"{100 * cost.profile.get(s, 0.0):.0f}%" for s in STAGES)
        lines.append(f"| {cost.label} | {'yes' if cost.profile else 'no py-spy'} | {shares} |")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--web-images", type=int, default=400, help="640x480 photos for the web CPU figures")
    parser.add_argument("--web-large", type=int, default=30, help="12-megapixel photos (0: none)")
    parser.add_argument("--web-concurrency", type=int, default=8, help="uploads at a time")
    parser.add_argument("--baseline", default=BEFORE, help="a commit to measure first, in a git worktree ('': none)")


def options(args: argparse.Namespace) -> argparse.Namespace:
    """This bench's settings, out of `make bench`'s arguments (`--quick`: a few images)."""
    quick = getattr(args, "quick", False)
    return argparse.Namespace(
        predictions=60 if quick else args.web_images,
        large=4 if quick else args.web_large,
        concurrency=args.web_concurrency,
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
            " counters. The stages are the app's own timers (`app_web_stage_cpu_seconds` in /metrics), measured one"
            " upload at a time so that no stage counts another upload's work; py-spy sampled the same processes"
            " meanwhile. The baseline is the code before these cuts, measured in the same run"
            + (f" ({'; '.join(ratio)})." if ratio else "."),
            "",
            table(costs),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = options(parser.parse_args())
    workdir = Path(tempfile.mkdtemp(prefix="web-cost-"))
    say(f"work files and logs in {workdir}")
    print(report(run(args, workdir)))


if __name__ == "__main__":
    main()
