"""Timeout-kill latency: how soon an overrunning task's process is gone, and replaced.

Each sample runs a task that calls ``time.sleep(10)`` with a 0.2 s timeout, one at a time,
on a 2-process :class:`omniq_mp.pool.ProcessPool` used directly (50 samples; 5 with
``--quick``):

* kill latency = ``time.monotonic()`` when ``pool.run`` returns (it returns once the
  process has exited, seen through its pidfd) - the time ``run`` was called - the timeout.
  ``run`` arms the deadline when the child acknowledges the task, so this also counts the
  RUN/STARTED round trip: it is an upper bound on "process gone after its deadline";
* respawn = from that return until the replacement worker is ready (``pool.on_respawn``
  fires as it goes back to the idle queue, i.e. ``pool.idle()`` is full again).

Then once through the full stack (SQLite store, ``worker_pool(concurrency=2)``, 10 samples;
2 with ``--quick``): a task enqueued with ``timeout=0.2, max_retries=0`` and
``process_tasks(limit=1)`` timed from the call until it returns with the failure stored,
minus the timeout. Reported as p50 / p95 / p99.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from _common import Figure, fresh_store, main_of, percentile

from omniq_mp import TaskStatus
from omniq_mp.models import OutcomeKind
from omniq_mp.pool import ProcessPool
from omniq_mp.queue import build_task
from omniq_mp.runtime import run

BENCH = "timeout_kill"
PROCS = 2
TIMEOUT = 0.2
SLEEP = 10.0
KILL_TARGET_MS = 50.0
PCTS = (50, 95, 99)
RESPAWN_WAIT = 30.0


class Respawns:
    """Counts replacements reported by ``ProcessPool.on_respawn`` and lets one wait for one."""

    def __init__(self) -> None:
        self.count = 0
        self._event = asyncio.Event()

    def __call__(self, old_pid: int, new_pid: int) -> None:
        self.count += 1
        self._event.set()

    async def next(self, pool: ProcessPool) -> None:
        """Wait for the next replacement and for the pool to be full again."""
        await asyncio.wait_for(self._event.wait(), RESPAWN_WAIT)
        self._event.clear()
        await wait_full(pool, 0)  # on_respawn fires just before the worker is queued


async def wait_full(pool: ProcessPool, poll: float) -> None:
    """Wait until every worker of ``pool`` is idle (the last kill's replacement is up)."""
    async with asyncio.timeout(RESPAWN_WAIT):
        while pool.idle() < pool.size:
            await asyncio.sleep(poll)


async def one_kill(pool: ProcessPool, respawns: Respawns) -> tuple[float, float, bool]:
    """One overrunning task: (kill latency s, respawn s, whether it ended TIMED_OUT)."""
    task = build_task(time.sleep, (SLEEP,), timeout=TIMEOUT)
    worker = await pool.acquire()
    called = time.monotonic()
    outcome = await pool.run(worker, task)
    returned = time.monotonic()
    await respawns.next(pool)
    ready = time.monotonic()
    return returned - called - TIMEOUT, ready - returned, outcome.kind is OutcomeKind.TIMED_OUT


async def pool_samples(samples: int) -> tuple[list[float], list[float], int]:
    """Kill latencies, respawn times and the count of outcomes other than TIMED_OUT."""
    pool = ProcessPool(PROCS)
    respawns = Respawns()
    pool.on_respawn = respawns
    await pool.start()
    kills, spawns, odd = [], [], 0
    try:
        for _ in range(samples):
            kill, spawn, timed_out = await one_kill(pool, respawns)
            kills.append(kill)
            spawns.append(spawn)
            odd += not timed_out
    finally:
        await pool.close()
    return kills, spawns, odd


async def stack_samples(samples: int) -> tuple[list[float], int]:
    """Full stack: seconds past the deadline until the timed-out task is stored as failed."""
    late, odd = [], 0
    async with fresh_store(procs=PROCS) as q, q.worker_pool(concurrency=PROCS) as w:
        for _ in range(samples):
            await wait_full(w.pool, 0.005)
            task_id = await q.enqueue(time.sleep, SLEEP, timeout=TIMEOUT, max_retries=0)
            called = time.monotonic()
            await w.process_tasks(limit=1)
            late.append(time.monotonic() - called - TIMEOUT)
            stored = await q.get_task(task_id)
            odd += stored is None or stored.status is not TaskStatus.FAILED
    return late, odd


def latency_figures(label: str, seconds: Sequence[float], target: str = "") -> list[Figure]:
    """p50/p95/p99 in ms; the p99 is the headline."""
    return [
        Figure(
            BENCH,
            f"{label} p{p}",
            1000 * percentile(seconds, p),
            "ms",
            target if p == 99 else "",
            headline=p == 99,
        )
        for p in PCTS
    ]


def print_line(label: str, seconds: Sequence[float]) -> None:
    """Detailed output: the percentiles and the max, in ms."""
    cells = ", ".join(f"p{p} {1000 * percentile(seconds, p):.1f}" for p in PCTS)
    print(f"  {label}: {cells}, max {1000 * max(seconds):.1f} ms ({len(seconds)} samples)")


def measure(quick: bool) -> list[Figure]:
    """Every figure of this script."""
    samples, stack = (5, 2) if quick else (50, 10)
    kills, spawns, odd = run(pool_samples(samples))
    late, stack_odd = run(stack_samples(stack))
    print(f"time.sleep({SLEEP:g}) with timeout {TIMEOUT} s:")
    print_line("ProcessPool, process gone after deadline", kills)
    print_line("ProcessPool, replacement ready after that", spawns)
    print_line("full stack, failure stored after deadline", late)
    if odd or stack_odd:
        print(f"  note: {odd} pool and {stack_odd} stack samples did not end as a timeout")
    return [
        *latency_figures("kill: process gone after deadline", kills, f"< {KILL_TARGET_MS:g} ms"),
        *latency_figures("respawn: replacement ready after kill", spawns),
        *latency_figures("full stack: failure stored after deadline", late),
    ]


if __name__ == "__main__":
    main_of(measure, __doc__)
