"""CPU-bound tasks through the full durable stack on 2 worker processes.

A pure-Python loop is first calibrated in this process to take about 20 ms of CPU time. Then T tasks
running it (200; 20 with ``--quick``) go through the whole stack: ``enqueue_tasks`` into a
fresh SQLite store (default ``synchronous=FULL``) and ``process_tasks(limit=T)`` on a
``worker_pool(concurrency=2)`` whose processes are already up, timed from the enqueue
until every result is stored. The ideal wall time is T x 20 ms / 2; efficiency is ideal
over measured. The stdlib ``ProcessPoolExecutor(2)`` running the same calls (submit all,
wait for all, after a warm-up) is measured the same way for reference.
"""

from __future__ import annotations

import concurrent.futures
import statistics
import time

from _common import Figure, Timer, fresh_store, main_of

from omniq_mp.runtime import run

BENCH = "cpu_bound"
PROCS = 2
TASK_SECONDS = 0.020


def spin(n: int) -> int:
    """The task: ``n`` iterations of pure-Python arithmetic (holds the GIL, no I/O)."""
    total = 0
    for i in range(n):
        total += i * i
    return total & 0xFFFF


def time_spin(n: int, repeats: int = 7) -> float:
    """Median CPU seconds of ``spin(n)`` in this process (CPU time, so that other load on
    the machine does not shorten the calibrated task)."""
    samples = []
    for _ in range(repeats):
        start = time.process_time()
        spin(n)
        samples.append(time.process_time() - start)
    return statistics.median(samples)


def calibrate(seconds: float) -> int:
    """Iterations of :func:`spin` that take ``seconds`` here (two refining passes)."""
    n = 10_000
    while (elapsed := time_spin(n, repeats=1)) < 0.005:
        n *= 2
    for _ in range(2):
        n = max(1, round(n * seconds / elapsed))
        elapsed = time_spin(n)
    return n


async def durable_wall(tasks: int, n: int) -> float:
    """Seconds from enqueue of ``tasks`` spins to every result stored, pool already up."""
    async with fresh_store(procs=PROCS) as q, q.worker_pool(concurrency=PROCS) as w:
        with Timer() as t:
            await q.enqueue_tasks([q.build(spin, n) for _ in range(tasks)])
            done = await w.process_tasks(limit=tasks)
    if done != tasks:
        print(f"  note: process_tasks settled {done} of {tasks} tasks")
    return t.seconds


def executor_wall(tasks: int, n: int) -> float:
    """Seconds for ProcessPoolExecutor(2) to run ``tasks`` spins (submit all, wait)."""
    with concurrent.futures.ProcessPoolExecutor(PROCS) as pool:
        concurrent.futures.wait([pool.submit(spin, 1) for _ in range(PROCS * 2)])  # warm-up
        with Timer() as t:
            concurrent.futures.wait([pool.submit(spin, n) for _ in range(tasks)])
    return t.seconds


def measure(quick: bool) -> list[Figure]:
    """Every figure of this script."""
    tasks = 20 if quick else 200
    n = calibrate(TASK_SECONDS)
    per_task = time_spin(n)
    ideal = tasks * per_task / PROCS
    print(f"calibrated: spin({n:,}) takes {per_task * 1000:.1f} ms of CPU in this process")
    print(f"{tasks} tasks on {PROCS} processes: ideal {ideal:.2f} s")
    durable = run(durable_wall(tasks, n))
    reference = executor_wall(tasks, n)
    for name, wall in (("omniq_mp (SQLite FULL)", durable), ("ProcessPoolExecutor", reference)):
        print(f"  {name:24} {wall:.2f} s, efficiency {100 * ideal / wall:.0f}%")
    return [
        Figure(BENCH, f"{tasks} x 20 ms tasks, wall time (ideal {ideal:.2f} s)", durable, "s"),
        Figure(
            BENCH, f"{tasks} x 20 ms tasks, efficiency", 100 * ideal / durable, "%", headline=True
        ),
        Figure(BENCH, "ProcessPoolExecutor(2), wall time", reference, "s"),
        Figure(
            BENCH, "ProcessPoolExecutor(2), efficiency", 100 * ideal / reference, "%", headline=True
        ),
    ]


if __name__ == "__main__":
    main_of(measure, __doc__)
