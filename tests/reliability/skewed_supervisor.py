"""A supervisor whose wall clock is wrong, for matrix row 33 (clock skew and jumps).

    python -m tests.reliability.skewed_supervisor --jumps 1.0:3600,6.0:-3600

runs what ``omniq-mp workers`` runs (settings from ``OMNIQ_*``), except that the queue's
wall clock (``AsyncTaskQueue.clock``: claim times, lease ends, retry ETAs) is the real
one plus an offset that jumps at the given seconds after start: an injected clock, the
unprivileged equivalent of running the process under ``faketime``. Monotonic time is
untouched, as a real wall-clock jump leaves it. SIGTERM or SIGINT stops it gracefully.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time

from omniq_mp.config import Settings
from omniq_mp.queue import AsyncTaskQueue
from omniq_mp.retry import RetryPolicy
from omniq_mp.runtime import run
from omniq_mp.storage import open_storage
from omniq_mp.worker import AsyncWorkerPool


class JumpingClock:
    """``time.time()`` plus an offset that changes at given monotonic moments."""

    def __init__(self, jumps: list[tuple[float, float]]) -> None:
        self._began = time.monotonic()
        self._jumps = sorted(jumps)

    def offset(self) -> float:
        """The offset now, in seconds."""
        elapsed = time.monotonic() - self._began
        current = 0.0
        for at, offset in self._jumps:
            if elapsed >= at:
                current = offset
        return current

    def __call__(self) -> float:
        return time.time() + self.offset()


def parse_jumps(text: str) -> list[tuple[float, float]]:
    """``"1.0:3600,6:-3600"`` -> [(1.0, 3600.0), (6.0, -3600.0)]."""
    jumps = []
    for part in filter(None, text.split(",")):
        at, _, offset = part.partition(":")
        jumps.append((float(at), float(offset)))
    return jumps


async def serve(jumps: list[tuple[float, float]]) -> int:
    """Run one supervisor with the jumping clock until SIGTERM or SIGINT."""
    settings = Settings.from_env()
    storage = open_storage(settings)
    await storage.open()
    policy = RetryPolicy(base=settings.retry_delay, cap=settings.retry_delay_max)
    queue = AsyncTaskQueue(
        storage, retry_policy=policy, clock=JumpingClock(jumps), max_crashes=settings.max_crashes
    )
    workers = AsyncWorkerPool(queue, settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, workers.request_stop)
    try:
        await workers.start()
        try:
            return await workers.process_tasks()
        finally:
            await workers.stop()
    finally:
        await storage.close()


def main() -> None:
    """Parse ``--jumps`` and serve."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jumps", default="", help="SECONDS:OFFSET,... after start")
    args = parser.parse_args()
    run(serve(parse_jumps(args.jumps)))


if __name__ == "__main__":
    main()
