"""The event-loop lag probe on real loops: a blocked loop shows, and reading resets it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from omniq_mp.looplag import LoopLagProbe
from omniq_mp.runtime import run
from tests.waiting import until

# The probe is due at most INTERVAL after the stall begins, so a BLOCK-second stall shows
# as at least BLOCK - INTERVAL = 0.28 s: clear of the 0.25 s the tests ask for.
INTERVAL = 0.02
BLOCK = 0.3


@contextlib.asynccontextmanager
async def running(probe: LoopLagProbe) -> AsyncIterator[LoopLagProbe]:
    """``probe`` running on this loop, up to its first sleep; cancelled afterwards."""
    task = asyncio.create_task(probe.run())
    await asyncio.sleep(0)
    try:
        yield probe
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def _blocked_loop_is_seen_once() -> None:
    async with running(LoopLagProbe(INTERVAL)) as probe:
        time.sleep(BLOCK)  # holds the loop, as a blocking call in a callback would

        async def seen() -> bool:
            return probe.peek() >= 0.25

        await until(seen, 5, "the stall to show in the probe")
        lag = probe.take()
        assert lag >= 0.25
        assert probe.take() == 0.0  # read once: the next heartbeat starts from nothing
        await asyncio.sleep(5 * INTERVAL)
        # Only the scheduler's jitter now, even on a busy 2-core machine.
        assert probe.take() < 0.25
        assert probe.overall == lag  # the running maximum survives the reads


async def test_a_blocked_loop_is_reported_as_lag_and_reading_resets_it() -> None:
    await _blocked_loop_is_seen_once()  # the stdlib loop pytest-asyncio runs


def test_the_same_on_uvloop_which_the_supervisor_runs_on() -> None:
    run(_blocked_loop_is_seen_once())


async def _a_stall_is_seen_by_a_read_that_comes_before_the_probe_wakes() -> None:
    async with running(LoopLagProbe(INTERVAL)) as probe:
        time.sleep(BLOCK)
        # No await in between: a heartbeat that came due early in the stall runs before
        # the probe's wake-up does, and must report the stall all the same.
        lag = probe.take()
        assert lag >= 0.25
        await asyncio.sleep(5 * INTERVAL)  # the probe wakes, late by what was counted
        assert probe.take() < 0.25  # reported once, not again
        assert probe.overall == lag


async def test_a_read_right_after_a_stall_reports_it_once() -> None:
    await _a_stall_is_seen_by_a_read_that_comes_before_the_probe_wakes()


def test_the_same_read_on_uvloop() -> None:
    run(_a_stall_is_seen_by_a_read_that_comes_before_the_probe_wakes())


class _CountingProbe(LoopLagProbe):
    samples = 0

    def note(self, lag: float) -> None:
        self.samples += 1
        super().note(lag)


async def test_an_idle_probe_sleeps_long_and_work_ends_that_sleep_at_once() -> None:
    busy = False
    probe = _CountingProbe(INTERVAL, idle_interval=60, busy=lambda: busy)
    async with running(probe):
        await asyncio.sleep(10 * INTERVAL)
        assert probe.samples == 0  # idle: no wake-up every INTERVAL
        busy = True
        probe.hurry()  # a claim: sampling resumes now, not 60 s from now
        time.sleep(BLOCK)  # a stall right after the claim is late by all of it

        async def seen() -> bool:
            return probe.peek() >= 0.25

        await until(seen, 5, "the stall after the hurry to show")
        before = probe.samples
        await asyncio.sleep(10 * INTERVAL)
        assert probe.samples > before + 2  # busy: every INTERVAL again


def test_hurry_without_an_idle_sleep_does_nothing() -> None:
    LoopLagProbe().hurry()  # not running: no sleep to end, no error


def test_a_negative_lag_counts_as_none() -> None:
    probe = LoopLagProbe()
    probe.note(-0.001)  # the stdlib loop may run a timer a clock tick early
    assert probe.take() == 0.0 and probe.overall == 0.0


def test_a_non_positive_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="interval must be positive"):
        LoopLagProbe(0)
    with pytest.raises(ValueError, match="idle_interval must be positive"):
        LoopLagProbe(idle_interval=-1)
