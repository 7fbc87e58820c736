"""Sign-ins while a burst of sign-ups arrives: password hashing has pools of its own, so a normal sign-in
stays fast. Prints the sign-in latencies (p50, p95) with and without the burst, measured in one run.

    python bench/sign_in_burst.py [--sign-ups 100] [--sign-ins 40]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.procs import exit_on_sigterm
from bench.run import System, database

PASSWORD = "correct horse"


async def sign_in_latencies(client: httpx.AsyncClient, email: str, count: int) -> list[float]:
    taken = []
    for _ in range(count):
        started = time.perf_counter()
        response = await client.post("/api/auth/login", json={"email": email, "password": PASSWORD})
        assert response.status_code == 200, response.text
        taken.append(time.perf_counter() - started)
        await asyncio.sleep(0.05)
    return taken


async def sign_up(client: httpx.AsyncClient, email: str) -> int:
    return (await client.post("/api/auth/register", json={"email": email, "password": PASSWORD})).status_code


def summary(label: str, seconds: list[float]) -> str:
    p95 = statistics.quantiles(seconds, n=20)[-1]
    return f"{label}: {len(seconds)} sign-ins, p50 {statistics.median(seconds) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms"


async def measure(url: str, sign_ups: int, sign_ins: int) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        assert await sign_up(client, "steady@example.com") == 201
        print(summary("quiet", await sign_in_latencies(client, "steady@example.com", sign_ins)), flush=True)
        burst = asyncio.gather(*(sign_up(client, f"burst-{i}@example.com") for i in range(sign_ups)))
        during = await sign_in_latencies(client, "steady@example.com", sign_ins)
        statuses = await burst
        print(summary(f"while {sign_ups} sign-ups arrive at once", during), flush=True)
        print(f"sign-ups answered: {sorted(set(statuses))} ({statuses.count(201)} created)", flush=True)


def main() -> None:
    exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sign-ups", type=int, default=100)
    parser.add_argument("--sign-ins", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sign-in-burst-") as folder:
        workdir = Path(folder)
        with database(None, workdir) as url:
            extra = {
                "REGISTRATIONS_PER_ADDRESS": str(args.sign_ups + 10),  # one address sends them all here
                "SIGN_INS_PER_ACCOUNT": str(2 * args.sign_ins + 10),  # one account signs in again and again
                "SIGN_INS_PER_ADDRESS": str(2 * args.sign_ins + 10),  # all from one address
            }
            system = System(workdir, url, workers=0, pinned=False, extra_env=extra)
            try:
                asyncio.run(measure(system.url, args.sign_ups, args.sign_ins))
            finally:
                system.stop()


if __name__ == "__main__":
    main()
