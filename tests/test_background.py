"""Background loops stop when told to, even when a cancellation comes out of a call as an ordinary error."""

import asyncio

from app.background import Every


async def test_runs_every_round_until_stopped() -> None:
    rounds = 0

    async def count() -> None:
        nonlocal rounds
        rounds += 1

    loop = Every(0.01, count, name="counting")
    await asyncio.sleep(0.1)
    await asyncio.wait_for(loop.stop(), 1)
    assert rounds >= 3
    seen = rounds
    await asyncio.sleep(0.05)
    assert rounds == seen


async def test_stops_when_the_action_turns_cancellation_into_an_error() -> None:
    started = asyncio.Event()

    async def swallows_cancel() -> None:
        started.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            raise RuntimeError("connection lost") from None  # what a client library may do

    loop = Every(0.01, swallows_cancel, name="swallowing")
    await started.wait()
    await asyncio.wait_for(loop.stop(), 2)  # a cancel alone would leave this loop running forever


async def test_wait_first_waits_before_the_first_round() -> None:
    rounds = 0

    async def count() -> None:
        nonlocal rounds
        rounds += 1

    loop = Every(10, count, name="patient", wait_first=True)
    await asyncio.sleep(0.05)
    await loop.stop()
    assert rounds == 0
