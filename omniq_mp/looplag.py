"""Event-loop lag: how late the supervisor's loop wakes a task that asked to sleep (row 32
of the fault matrix: the loop must keep up while a producer enqueues under full load).

    run():  sleep(interval) ── woke at loop.time() ── lag = woke - due ──> recent, overall
    take(): recent ──> the heartbeat's "loop_lag", then recent = 0

Anything that holds the loop (a slow callback, a blocking call, the process not being
scheduled on a busy machine) delays the wake-up, and the supervisor's other timers (lease
renewals, deadlines, kills) by as much. It is a sample, not a trace: a stall of S seconds
shows as at least ``S - interval``.

While ``busy()`` is false the probe sleeps ``idle_interval`` instead: an idle supervisor
has no lease or deadline that a stall could make late, and on a VM each wake-up costs a
fraction of a millisecond of CPU, so ten a second for nothing was half its idle CPU.
:meth:`hurry` ends an idle sleep at once when work arrives.

A read also counts a wake-up that is already overdue by more than a sampling interval:
after a stall the loop runs the callbacks that came due during it in the order of their
due times, so a heartbeat due early in the stall runs before the probe wakes, and would
otherwise report the stall one beat late. What a read counts is not counted again when
the probe wakes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["IDLE_LAG_INTERVAL", "LAG_INTERVAL", "LoopLagProbe"]

# Short enough to catch a stall near the 100 ms the matrix allows; the supervisor already
# wakes this often for its task watch while it holds tasks.
LAG_INTERVAL = 0.1
IDLE_LAG_INTERVAL = 1.0  # while nothing is held: a stall over a second still shows


def _always() -> bool:
    return True


class LoopLagProbe:
    """Measures the running loop's lag from a background task (:meth:`run`).

    :param interval: seconds between wake-ups while ``busy()``; the lag is how late
        each one comes.
    :param idle_interval: seconds between wake-ups while not ``busy()``.
    :param busy: whether the loop has work whose timing matters (always, by default).
    """

    def __init__(
        self,
        interval: float = LAG_INTERVAL,
        idle_interval: float = IDLE_LAG_INTERVAL,
        busy: Callable[[], bool] = _always,
    ) -> None:
        for name, value in (("interval", interval), ("idle_interval", idle_interval)):
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        self.interval = interval
        self.idle_interval = idle_interval
        self.busy = busy
        self.overall = 0.0  # the largest lag seen since the probe started, in seconds
        self._recent = 0.0  # the largest since the last take()
        self._nap: asyncio.Future[None] | None = None  # an idle sleep in progress
        self._due = 0.0  # when the sleep in progress should end, on the loop's clock
        self._loop: asyncio.AbstractEventLoop | None = None  # set while run() runs

    async def run(self) -> None:
        """Sleep and measure until cancelled (start it with ``asyncio.create_task``)."""
        loop = asyncio.get_running_loop()
        # Whenever another task can read the probe, run() is inside one of its sleeps
        # (it wakes, notes the lag and sleeps again without yielding): _due is that sleep's.
        self._loop = loop
        try:
            while True:
                if self.busy():
                    self._due = loop.time() + self.interval
                    await asyncio.sleep(self.interval)
                else:
                    self._due = loop.time() + self.idle_interval
                    self._nap = nap = loop.create_future()
                    timer = loop.call_later(self.idle_interval, _end_nap, nap)
                    try:
                        await nap
                    finally:
                        timer.cancel()
                        self._nap = None
                self.note(loop.time() - self._due)
        finally:
            self._loop = None

    def hurry(self) -> None:
        """End an idle sleep now (work has arrived, so the next one is ``interval`` long);
        the time from this call to the probe running again counts as lag."""
        nap = self._nap
        if nap is not None and not nap.done():
            self._due = nap.get_loop().time()
            nap.set_result(None)

    def note(self, lag: float) -> None:
        """Record one wake-up ``lag`` seconds late (the stdlib loop may wake a timer up to
        its clock resolution early: a negative lag counts as none)."""
        lag = max(0.0, lag)
        self._recent = max(self._recent, lag)
        self.overall = max(self.overall, lag)

    def peek(self) -> float:
        """The largest lag since the last :meth:`take`, in seconds, without resetting it."""
        return max(self._recent, self._overdue())

    def take(self) -> float:
        """The largest lag since the last call, in seconds; starts the next period at 0."""
        overdue = self._overdue()
        if overdue:
            self.note(overdue)
            self._due += overdue  # counted now: the wake-up adds only what comes after
        lag, self._recent = self._recent, 0.0
        return lag

    def _overdue(self) -> float:
        """How late the wake-up the probe waits for already is, when that is more than a
        sampling interval (a stall it has not woken up from yet); else 0."""
        if self._loop is None:
            return 0.0
        late = self._loop.time() - self._due
        return late if late > self.interval else 0.0


def _end_nap(nap: asyncio.Future[None]) -> None:
    if not nap.done():  # hurry() may have ended it already
        nap.set_result(None)
