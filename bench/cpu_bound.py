"""CPU-bound tasks through the full durable stack on 2 worker processes.

A pure-Python loop is first calibrated in this process to take about 20 ms of CPU time. Then T tasks
running it (200; 20 with ``--quick``) go through the whole stack: ``enqueue_tasks`` into a
fresh SQLite store (default ``synchronous=FULL``) and ``process_tasks(limit=T)`` on a
``worker_pool(concurrency=2)`` whose processes are already up, timed from the enqueue
until every result is stored. The ideal wall time is the CPU time the tasks report
having used, over 2 processes; efficiency is ideal over measured. Each run has its own
ideal: on a VM with noisy neighbours the same loop took 21 ms of CPU in one run and 24 ms
in the next, and an ideal from the calibration alone once gave the stdlib pool 111%.
The stdlib ``ProcessPoolExecutor(2)`` running the same calls (submit all, wait for all,
after a warm-up) is measured the same way for reference.
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


def spin(n: int) -> float:
    """The task: ``n`` iterations of pure-Python arithmetic (holds the GIL, no I/O).
    Returns the CPU seconds it took in its process."""
    start = time.process_time()
    total = 0
    for i in range(n):
        total += i * i
    assert total >= 0
    return time.process_time() - start


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


async def durable_wall(tasks: int, n: int) -> tuple[float, float]:
    """Seconds from enqueue of ``tasks`` spins to every result stored, pool already up,
    and the CPU seconds the tasks used."""
    async with fresh_store(procs=PROCS) as q, q.worker_pool(concurrency=PROCS) as w:
        with Timer() as t:
            ids = await q.enqueue_tasks([q.build(spin, n) for _ in range(tasks)])
            done = await w.process_tasks(limit=tasks)
        if done != tasks:
            raise RuntimeError(f"process_tasks settled {done} of {tasks} tasks")
        cpu = sum([await q.get_result(task_id) for task_id in ids])
    return t.seconds, cpu


def executor_wall(tasks: int, n: int) -> tuple[float, float]:
    """Seconds for ProcessPoolExecutor(2) to run ``tasks`` spins (submit all, wait), and
    the CPU seconds the tasks used."""
    with concurrent.futures.ProcessPoolExecutor(PROCS) as pool:
        concurrent.futures.wait([pool.submit(spin, 1) for _ in range(PROCS * 2)])  # warm-up
        with Timer() as t:
            futures = [pool.submit(spin, n) for _ in range(tasks)]
            concurrent.futures.wait(futures)
    return t.seconds, sum(f.result() for f in futures)


def measure(quick: bool) -> list[Figure]:
    """Every figure of this script."""
    tasks = 20 if quick else 200
    n = calibrate(TASK_SECONDS)
    print(f"calibrated: spin({n:,}) takes {time_spin(n) * 1000:.1f} ms of CPU in this process")
    durable, durable_cpu = run(durable_wall(tasks, n))
    reference, reference_cpu = executor_wall(tasks, n)
    efficiency = {}
    for name, wall, cpu in (
        ("omniq_mp (SQLite FULL)", durable, durable_cpu),
        ("ProcessPoolExecutor", reference, reference_cpu),
    ):
        ideal = cpu / PROCS
        efficiency[name] = 100 * ideal / wall
        print(
            f"  {name:24} {wall:.2f} s; the tasks used {cpu:.2f} s of CPU (ideal {ideal:.2f} s):"
            f" efficiency {efficiency[name]:.0f}%"
        )
    return [
        Figure(BENCH, f"{tasks} x 20 ms tasks, wall time", durable, "s"),
        Figure(
            BENCH,
            f"{tasks} x 20 ms tasks, efficiency",
            efficiency["omniq_mp (SQLite FULL)"],
            "%",
            headline=True,
        ),
        Figure(BENCH, "ProcessPoolExecutor(2), wall time", reference, "s"),
        Figure(
            BENCH,
            "ProcessPoolExecutor(2), efficiency",
            efficiency["ProcessPoolExecutor"],
            "%",
            headline=True,
        ),
    ]


if __name__ == "__main__":
    main_of(measure, __doc__)
