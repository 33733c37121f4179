"""Event-loop lag: how late the supervisor's loop wakes a task that asked to sleep (row 32
of the fault matrix: the loop must keep up while a producer enqueues under full load).

    run():  sleep(interval) ── woke at loop.time() ── lag = woke - due ──> recent, overall
    take(): recent ──> the heartbeat's "loop_lag", then recent = 0

Anything that holds the loop (a slow callback, a blocking call, the process not being
scheduled on a busy machine) delays the wake-up, and the supervisor's other timers (lease
renewals, deadlines, kills) by as much. It is a sample, not a trace: a stall of S seconds
shows as at least ``S - interval``.
"""

from __future__ import annotations

import asyncio

__all__ = ["LAG_INTERVAL", "LoopLagProbe"]

# Short enough to catch a stall near the 100 ms the matrix allows; the supervisor already
# wakes this often for its task watch, so the probe adds no new kind of idle cost.
LAG_INTERVAL = 0.1


class LoopLagProbe:
    """Measures the running loop's lag from a background task (:meth:`run`).

    :param interval: seconds between wake-ups; the lag is how late each one comes.
    """

    def __init__(self, interval: float = LAG_INTERVAL) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be positive, got {interval}")
        self.interval = interval
        self.overall = 0.0  # the largest lag seen since the probe started, in seconds
        self._recent = 0.0  # the largest since the last take()

    async def run(self) -> None:
        """Sleep and measure until cancelled (start it with ``asyncio.create_task``)."""
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.interval
            await asyncio.sleep(self.interval)
            self.note(loop.time() - due)

    def note(self, lag: float) -> None:
        """Record one wake-up ``lag`` seconds late (the stdlib loop may wake a timer up to
        its clock resolution early: a negative lag counts as none)."""
        lag = max(0.0, lag)
        self._recent = max(self._recent, lag)
        self.overall = max(self.overall, lag)

    def peek(self) -> float:
        """The largest lag since the last :meth:`take`, in seconds, without resetting it."""
        return self._recent

    def take(self) -> float:
        """The largest lag since the last call, in seconds; starts the next period at 0."""
        lag, self._recent = self._recent, 0.0
        return lag
