"""`python bench/hostile.py`: hostile uploads against the whole system while a normal user uploads photos.

Starts its own Redis server, a database of its own (on the PostgreSQL server of `--postgres`, else SQLite),
the web app (uvicorn with app.run's UVICORN_ARGS, as `make run` does) and one worker (the stand-in model),
as bench/chaos.py does.
Then, for each scenario, ROUNDS times: 20 hostile images (tests/hostile.py) in flight at once from 4 users,
while a normal user uploads a photo, waits for its result, and uploads the next. It reports the normal
user's latency, the web process's resident memory (idle, peak, after) and its decode processes' peak,
and whether `/health/live` answered throughout; then writes the "Hostile uploads" section of
docs/reliability.md (`--no-write`: print it only).

The pieces are for a "hostile load" phase of `make chaos` too: `Memory` samples a process and its
children, `probe_live` watches the health check, `hostile_burst` sends the images, `normal_user` measures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.run import UVICORN_ARGS  # noqa: E402
from bench import chaos  # noqa: E402
from bench.images import make_image  # noqa: E402
from bench.procs import children, exit_on_sigterm  # noqa: E402
from bench.run import free_port  # noqa: E402
from bench.sections import write_section  # noqa: E402
from tests import hostile  # noqa: E402

PY = sys.executable
ROUNDS = 3
IN_FLIGHT = 20
HOSTILE_USERS = 4
SECTION = "## Hostile uploads"
# Refused from their headers / stopped only by the decode processes' time limit.
SCENARIOS = {"refused from the header": list(hostile.MAKERS), "past the time limit": list(hostile.SLOW_MAKERS)}


def say(message: str) -> None:
    print(f"[hostile {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---- memory --------------------------------------------------------------------------------------------


def status_kb(pid: int, name: str) -> int:
    """A field of /proc/<pid>/status (VmRSS, VmHWM, ...), in kB; 0 once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{name}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class Memory:
    """Samples the resident memory of a process, and apart the sum of its descendants', until stopped.
    The peak also counts the kernel's own high-water mark (VmHWM), reset by `reset_peak`, so a spike
    between two samples is not missed."""

    pid: int
    interval: float = 0.05
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # (time, own kB, descendants' kB)

    def reset_peak(self) -> None:
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")

    def sample(self) -> tuple[int, int]:
        own = status_kb(self.pid, "VmRSS")
        kids = sum(status_kb(child, "VmRSS") for child in children(self.pid))
        self.samples.append((time.time(), own, kids))
        return own, kids

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.to_thread(self.sample)
            await asyncio.sleep(self.interval)

    @property
    def peak_mb(self) -> float:
        return max([own for _, own, _ in self.samples] + [status_kb(self.pid, "VmHWM")]) / 1024

    @property
    def children_peak_mb(self) -> float:
        return max(kids for _, _, kids in self.samples) / 1024


# ---- traffic -------------------------------------------------------------------------------------------


async def probe_live(url: str, stop: asyncio.Event, every: float = 0.05) -> list[tuple[float, int]]:
    """`/health/live` every `every` seconds until stopped: (seconds taken, status; 0 for no answer)."""
    answers = []
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        while not stop.is_set():
            started = time.monotonic()
            try:
                status = (await client.get("/health/live")).status_code
            except httpx.HTTPError:
                status = 0
            answers.append((time.monotonic() - started, status))
            await asyncio.sleep(every)
    return answers


@dataclass
class Outcome:
    name: str
    status: int
    detail: str
    seconds: float
    prediction_id: str | None = None  # of an accepted upload: answered (200), queued (202) or late (504)


def accepted_id(status: int, body: dict[str, Any]) -> str | None:
    """The prediction an answer says was accepted; None for a refusal."""
    found = None
    if status in (200, 202):
        found = body.get("id")
    elif status == 504:  # accepted, not finished within the wait: the id comes with the error
        found = (body.get("extra") or {}).get("id")
    return str(found) if found else None


async def hostile_burst(
    url: str, tokens: list[str], files: list[tuple[str, bytes]], wait: bool = True
) -> list[Outcome]:
    """Every file uploaded at once, the users taking turns; each answer with its time. `wait=False`:
    as async jobs (`?wait=false`, answered 202)."""
    params = {} if wait else {"wait": "false"}

    async def one(client: httpx.AsyncClient, token: str, name: str, data: bytes) -> Outcome:
        started = time.monotonic()
        headers = {"Authorization": f"Bearer {token}"}
        prediction_id = None
        try:
            response = await client.post(
                "/api/predictions", headers=headers, params=params, files={"file": (name, data)}
            )
            status = response.status_code
            body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
            detail = str(body.get("detail", "")) if status >= 400 else ""
            prediction_id = accepted_id(status, body)
        except (httpx.HTTPError, ValueError) as exc:
            status, detail = 0, repr(exc)
        return Outcome(name, status, detail, time.monotonic() - started, prediction_id)

    limits = httpx.Limits(max_connections=len(files) + 5)
    async with httpx.AsyncClient(base_url=url, timeout=180, limits=limits) as client:
        return await asyncio.gather(
            *(one(client, tokens[i % len(tokens)], name, data) for i, (name, data) in enumerate(files))
        )


@functools.cache
def _scene() -> Image.Image:
    picture = Image.linear_gradient("L").resize((4032, 3024)).convert("RGB")
    draw = ImageDraw.Draw(picture)
    for i in range(0, 4032, 288):
        draw.rectangle((i, 400 + i // 8, i + 144, 2400), fill=((i * 7) % 256, 120, 200 - i % 200))
    return picture


def photo(seed: int) -> bytes:
    """A 12 MP phone-sized JPEG, distinct per seed so that the result cache never answers for it."""
    picture = _scene().copy()
    picture.paste(Image.open(io.BytesIO(make_image(seed))), (64, 64))
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


async def normal_user(
    url: str,
    token: str,
    seeds: Iterable[int],
    until: asyncio.Event | None = None,
    errors: list[str] | None = None,
    pause: float = 0.0,
) -> list[float]:
    """Uploads one photo after another (waiting for each result, then `pause` seconds) until `until` is
    set, at least one; or each of `seeds` when `until` is None. Returns the latencies of the answered (200)
    ones. Any other answer raises, or with `errors` is added to it ("<status>: <detail>"; 0: no answer)."""
    latencies = []
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=180) as client:
        for seed in seeds:
            data = await asyncio.to_thread(photo, seed)
            started = time.monotonic()
            try:
                response = await client.post("/api/predictions", files={"file": ("photo.jpg", data)})
                status, text = response.status_code, response.text
            except httpx.HTTPError as exc:
                if errors is None:
                    raise
                status, text = 0, repr(exc)
            if status == 200:
                latencies.append(time.monotonic() - started)
            elif errors is None:
                raise RuntimeError(f"the normal user's photo got {status}: {text}")
            else:
                errors.append(f"{status}: {text[:200]}")
            if until is not None and until.is_set():
                break
            await asyncio.sleep(pause)
    return latencies


# ---- the system ----------------------------------------------------------------------------------------


class System:
    """The web app and one worker on a Redis server and a database, started as `make run` starts them."""

    def __init__(self, workdir: Path, redis_url: str, database_url: str) -> None:
        self.workdir, self.port = workdir, free_port()
        self.redis_url, self.database_url = redis_url, database_url
        self.env = os.environ | {
            "REDIS_URL": redis_url,
            "DATABASE_URL": database_url,
            "INFERENCE_BACKEND": "stand-in",
            "MODEL_WEIGHTS": "random",
            "UPLOAD_DIR": str(workdir / "uploads"),
            "REGISTRATIONS_PER_ADDRESS": "100000",
            "LOGIN_ATTEMPTS_PER_ADDRESS": "100000",
            "SIGN_INS_PER_ADDRESS": "100000",  # every sign-in comes from this machine
        }
        self.web = self._spawn("web", ["-m", "uvicorn", *UVICORN_ARGS, "--port", str(self.port)])
        self.worker = self._spawn("worker", ["-m", "app.worker"], WORKER_NAME="hostile-0")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def database(self) -> str:
        return "PostgreSQL" if self.database_url.startswith("postgres") else "SQLite"

    def _spawn(self, name: str, args: list[str], **extra: str) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("ab")
        return subprocess.Popen([PY, *args], env=self.env | extra, cwd=ROOT, stdout=log, stderr=log)

    def stop(self) -> None:
        for process in (self.web, self.worker):
            if process.poll() is None:
                process.terminate()
        for process in (self.web, self.worker):
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()


async def _admin(base: str, statement: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(base.replace("postgres://", "postgresql://", 1), timeout=5)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


async def fresh_database(base: str) -> str | None:
    """An empty database of the run's own on the PostgreSQL server of `base`; None if there is none."""
    name = f"hostile_{os.getpid()}"
    try:
        await _admin(base, f'DROP DATABASE IF EXISTS "{name}"')
        await _admin(base, f'CREATE DATABASE "{name}"')
    except (TimeoutError, OSError, ImportError) as exc:
        say(f"no PostgreSQL at {base} ({exc!r}): SQLite instead")
        return None
    return f"{base.rpartition('/')[0]}/{name}"


async def drop_database(base: str, url: str) -> None:
    await _admin(base, f'DROP DATABASE IF EXISTS "{url.rpartition("/")[2]}" WITH (FORCE)')


async def register(url: str, email: str) -> str:
    body = {"email": email, "password": "hostile-password"}
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        await client.post("/api/auth/register", json=body)
        response = await client.post("/api/auth/login", json=body)
        response.raise_for_status()
        token: str = response.json()["access_token"]
        return token


# ---- the run -------------------------------------------------------------------------------------------


@dataclass
class Result:
    scenario: str
    idle_mb: float = 0.0
    peak_mb: float = 0.0
    after_mb: float = 0.0
    decoders_peak_mb: float = 0.0
    quiet: list[float] = field(default_factory=list)  # the normal user's latencies, no burst
    during: list[float] = field(default_factory=list)  # and during the bursts
    outcomes: list[Outcome] = field(default_factory=list)
    live: list[tuple[float, int]] = field(default_factory=list)


def _set(event: asyncio.Event, _: object) -> None:
    event.set()


async def scenario(system: System, name: str, files: dict[str, Path], tokens: list[str], seed: int) -> Result:
    result = Result(name)
    normal, attackers = tokens[0], tokens[1:]
    images = [(f"{n}.{path.suffix[1:]}", path.read_bytes()) for n, path in files.items()]
    burst = [images[i % len(images)] for i in range(IN_FLIGHT)]
    memory = Memory(system.web.pid)
    result.quiet = await normal_user(system.url, normal, list(range(seed, seed + 3)))
    result.idle_mb = memory.sample()[0] / 1024
    memory.reset_peak()
    stop = asyncio.Event()
    sampling = asyncio.create_task(memory.run(stop))
    probing = asyncio.create_task(probe_live(system.url, stop))
    for round_ in range(ROUNDS):
        attack = asyncio.create_task(hostile_burst(system.url, attackers, burst))
        done = asyncio.Event()
        attack.add_done_callback(functools.partial(_set, done))
        await asyncio.sleep(0.05)  # the burst is in flight
        seeds = list(range(seed + 10 + round_ * 100, seed + 110 + round_ * 100))
        result.during += await normal_user(system.url, normal, seeds, until=done)
        result.outcomes += await attack
        await asyncio.sleep(1)
    await asyncio.sleep(2)  # what stays once it is over
    stop.set()
    result.live = await probing
    await sampling
    result.after_mb = memory.sample()[0] / 1024
    result.peak_mb, result.decoders_peak_mb = memory.peak_mb, memory.children_peak_mb
    return result


def describe(result: Result) -> list[str]:
    quiet, during = statistics.median(result.quiet), result.during
    failures = sum(1 for _, status in result.live if status != 200)
    statuses: dict[str, set[int]] = {}
    for outcome in result.outcomes:
        statuses.setdefault(outcome.name, set()).add(outcome.status)
    answers = ", ".join(f"{name} {'/'.join(map(str, sorted(s)))}" for name, s in statuses.items())
    slowest = max(outcome.seconds for outcome in result.outcomes)
    return [
        f"| {result.scenario} | {quiet:.2f} s | {statistics.median(during):.2f} / {max(during):.2f} s "
        f"({len(during)}) | {result.idle_mb:.0f} / **{result.peak_mb:.0f}** / {result.after_mb:.0f} MB "
        f"| {result.decoders_peak_mb:.0f} MB | {len(result.live) - failures} of {len(result.live)}, slowest "
        f"{max(seconds for seconds, _ in result.live) * 1000:.0f} ms | {answers}; slowest {slowest:.1f} s |"
    ]


def report(results: list[Result], machine: str, database: str) -> str:
    lines = [
        SECTION,
        "",
        f"`python bench/hostile.py`, on {time.strftime('%Y-%m-%d')} ({machine}): the web app, one worker (the "
        f"stand-in model), a Redis server and a {database} database of its own, started as `make run` starts "
        f"them, with the default settings (2 decode processes, 5 s, 512 MB, a 192 MB cost budget). {ROUNDS} times, "
        f"{IN_FLIGHT} hostile images in flight at once from {HOSTILE_USERS} users (`tests/hostile.py`), while "
        "a normal user uploads a 12 MP phone photo, waits for its result and uploads the next. Targets: the "
        "normal user answered within 2 s, the web process under 500 MB at its peak and back near idle after, "
        "`/health/live` answering throughout (asked every 50 ms).",
        "",
        "| hostile images | normal user, quiet | during the bursts: median / max (uploads) | web process: "
        "idle / peak / after | decode processes, peak | `/health/live` answered | hostile answers |",
        "| --- | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for result in results:
        lines += describe(result)
    lines += [
        "",
        "*Refused from the header*: a progressive JPEG of 3,000 scans, 7999x7999 WebP, PNG and GIF, a PNG "
        "whose text inflates to 60 MB; each is refused in milliseconds, before any pixel is decoded. A GIF of "
        "200,000 frames (4.6 MB) is not among them: only its first frame is decoded, so it is accepted, its "
        "check taking 15 ms and 10 MB here (tests/test_sandbox.py). *Past the time limit*: a 7999x7999 "
        "JPEG of 100 scans, which passes every check made from the header and takes 5 to 7 s to decode here: "
        "each holds a decode process for up to 5 s, and most are killed then (the few that finish in time are "
        "classified). Twenty of them hold both processes for 50 s, and the decode queue is first come, first "
        "served, so a normal upload waits behind them (not yet fixed: a fair queue, the next free process "
        "going to the user who has used the processes least, would bound the wait by one decode). The web "
        "process decodes neither kind; what it keeps after a burst above idle is the allocator holding on to "
        "the request bodies' memory for the next ones.",
        "",
    ]
    return "\n".join(lines)


@contextlib.asynccontextmanager
async def own_system(workdir: Path, postgres: str) -> AsyncIterator[System]:
    """A System, ready, on a Redis server and a database of its own (on the PostgreSQL server of
    `postgres`, else SQLite); stopped, and its database dropped, at the end."""
    from app import db

    redis = chaos.Redis(workdir)
    database_url = await fresh_database(postgres) or f"sqlite://{workdir / 'hostile.sqlite3'}"
    say(f"database {database_url}")
    try:
        await db.apply_migrations(database_url)
        system = System(workdir, redis.url, database_url)
        try:
            await chaos.wait_ready(system.url, 1)
            yield system
        finally:
            system.stop()
    finally:
        redis.kill()
        if database_url.startswith("postgres"):
            await drop_database(postgres, database_url)


def publish(section: str, args: argparse.Namespace) -> None:
    """Print a section of docs/reliability.md and, unless `--no-write`, write it there in place of its old one."""
    print(section)
    if not args.no_write:
        write_section(ROOT / "docs" / "reliability.md", section)
        say(f"wrote the section {section.splitlines()[0]!r} of docs/reliability.md")


def arguments(description: str | None) -> argparse.ArgumentParser:
    """The arguments of a bench that starts a system of its own and writes its section."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-write", action="store_true", help="print the section, do not write it")
    parser.add_argument(
        "--postgres",
        default="postgres://postgres@127.0.0.1:5432/postgres",
        help="a PostgreSQL server on which the run makes (and then drops) a database of its own; SQLite without one",
    )
    return parser


async def main_async(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="hostile-"))
    say(f"work files and logs in {workdir}")
    files = await asyncio.to_thread(hostile.write_all, workdir / "images", [*hostile.MAKERS, *hostile.SLOW_MAKERS])
    async with own_system(workdir, args.postgres) as system:
        tokens = [await register(system.url, f"user{i}@example.com") for i in range(HOSTILE_USERS + 1)]
        results = []
        for number, (name, names) in enumerate(SCENARIOS.items()):
            say(f"scenario: {name}")
            chosen = {n: files[n] for n in names}
            results.append(await asyncio.wait_for(scenario(system, name, chosen, tokens, number * 10_000), 900))
            say("  " + describe(results[-1])[0])
    publish(report(results, await asyncio.to_thread(chaos.machine), system.database), args)


def main() -> None:
    exit_on_sigterm()
    args: Any = arguments(__doc__).parse_args()
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
