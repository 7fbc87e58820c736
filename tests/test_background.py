"""Background loops stop when told to, even when a cancellation comes out of a call as an ordinary error."""

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from app.background import Every
from tests.helpers import eventually


async def test_runs_every_round_until_stopped() -> None:
    rounds, three = 0, asyncio.Event()

    async def count() -> None:
        nonlocal rounds
        rounds += 1
        if rounds == 3:
            three.set()

    loop = Every(0.01, count, name="counting")
    await asyncio.wait_for(three.wait(), 10)  # not a fixed 0.1 s: a stalled machine ran fewer rounds in it
    await asyncio.wait_for(loop.stop(), 30)
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
    await asyncio.wait_for(loop.stop(), 30)  # a cancel alone would leave this loop running forever


async def test_wait_first_waits_before_the_first_round() -> None:
    rounds = 0

    async def count() -> None:
        nonlocal rounds
        rounds += 1

    loop = Every(10, count, name="patient", wait_first=True)
    await asyncio.sleep(0.05)
    await loop.stop()
    assert rounds == 0


async def test_a_failing_action_is_a_warning_once_not_every_round(caplog: pytest.LogCaptureFixture) -> None:
    """Found in review: a worker whose heartbeat write kept failing said so only at DEBUG, so it ran unseen by
    the web app (/health/ready 503) with nothing in the log at the default level."""
    failing, rounds = True, {True: 0, False: 0}  # rounds run, failed or not

    async def beat() -> None:
        rounds[failing] += 1
        if failing:
            raise ConnectionError("Redis refused the heartbeat")

    def more_rounds(than: int, failed: bool) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return rounds[failed] > than

        return check

    # Counted, not timed: after fixed sleeps, a stalled machine ran no round in one of them.
    with caplog.at_level("INFO", logger="app.background"):
        loop = Every(0.01, beat, name="heartbeat")
        await eventually(more_rounds(9, failed=True), what="ten failed rounds")
        failing = False
        await eventually(more_rounds(0, failed=False), what="a round that worked")
        failing, failed = True, rounds[True]
        await eventually(more_rounds(failed, failed=True), what="a failed round again")
        await loop.stop()
    logged = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "app.background"]
    warnings = [message for level, message in logged if level == "WARNING"]
    assert len(warnings) == 2 and warnings[0].startswith("heartbeat: round failed (1 in a row): ConnectionError(")
    assert any(level == "INFO" and "heartbeat: working again after" in message for level, message in logged)
