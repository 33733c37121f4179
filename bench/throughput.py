"""Durable no-op throughput on SQLite with 2 worker processes.

What is measured, each in a fresh store in a temporary directory, for
``sqlite_synchronous`` FULL (the default) and NORMAL:

* batched enqueue: N no-op tasks built with ``AsyncOmniQ.build`` and stored with
  ``enqueue_tasks`` in batches of 500 (one transaction per batch); tasks stored per second,
  pickling included;
* one-by-one enqueue: N/5 tasks stored with ``enqueue`` (one transaction, one commit each);
* drain: ``process_tasks(limit=N)`` on a ``worker_pool(concurrency=2)`` whose processes are
  already up, timed from the call until it returns with every result stored; results
  stored per second.

For reference: omniq_mp's own ``ProcessPool`` running the same N no-ops with no storage and
no supervisor (the IPC cost alone), and the stdlib ``ProcessPoolExecutor(2)`` running them
(submit all, wait for all, after a warm-up) as the in-memory ceiling. Each durable run is
repeated (3 times, once with ``--quick``) and the median is reported.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import statistics
from dataclasses import dataclass

from _common import Figure, Timer, fresh_store, main_of, spread

from omniq_mp import AsyncOmniQ
from omniq_mp.models import Task
from omniq_mp.pool import ProcessPool
from omniq_mp.queue import build_task
from omniq_mp.runtime import run

BENCH = "throughput"
BATCH = 500
PROCS = 2
DRAIN_TARGET = 1_800.0


def noop() -> None:
    """The task: does nothing, returns None."""


@dataclass(frozen=True)
class Rates:
    """Tasks per second measured in one durable run."""

    enqueue_batched: float
    enqueue_single: float
    drain: float


async def enqueue_batched(q: AsyncOmniQ, n: int) -> float:
    """Build and store ``n`` no-ops, ``BATCH`` per transaction; returns tasks/s."""
    with Timer() as t:
        for start in range(0, n, BATCH):
            await q.enqueue_tasks([q.build(noop) for _ in range(min(BATCH, n - start))])
    return n / t.seconds


async def enqueue_single(q: AsyncOmniQ, n: int) -> float:
    """Store ``n`` no-ops with one ``enqueue`` (one commit) each; returns tasks/s."""
    with Timer() as t:
        for _ in range(n):
            await q.enqueue(noop)
    return n / t.seconds


async def drain(q: AsyncOmniQ, n: int) -> float:
    """Run ``n`` stored tasks on a started 2-process pool; returns results stored per second."""
    async with q.worker_pool(concurrency=PROCS) as w:
        with Timer() as t:
            done = await w.process_tasks(limit=n)
    if done != n:
        print(f"  note: process_tasks settled {done} of {n} tasks")
    return done / t.seconds


async def durable_run(n: int, sync: str) -> Rates:
    """One run of the three durable measurements, each in its own fresh store."""
    async with fresh_store(procs=PROCS, sqlite_synchronous=sync) as q:
        batched = await enqueue_batched(q, n)
        drained = await drain(q, n)
    async with fresh_store(procs=PROCS, sqlite_synchronous=sync) as q:
        single = await enqueue_single(q, max(n // 5, 1))
    return Rates(batched, single, drained)


async def pool_rate(n: int) -> float:
    """omniq_mp's own ProcessPool alone (no storage, no supervisor): 2 lanes, each acquiring
    a worker and running the next no-op on it; returns tasks/s."""
    tasks = [build_task(noop) for _ in range(n)]
    pool = ProcessPool(PROCS)
    await pool.start()

    async def lane(mine: list[Task]) -> None:
        for task in mine:
            await pool.run(await pool.acquire(), task)

    try:
        with Timer() as t:
            await asyncio.gather(*(lane(tasks[i::PROCS]) for i in range(PROCS)))
    finally:
        await pool.close()
    return n / t.seconds


def executor_rate(n: int) -> float:
    """stdlib ProcessPoolExecutor(2): submit ``n`` no-ops, wait for all; returns tasks/s."""
    with concurrent.futures.ProcessPoolExecutor(PROCS) as pool:
        concurrent.futures.wait([pool.submit(noop) for _ in range(PROCS * 2)])  # warm-up
        with Timer() as t:
            concurrent.futures.wait([pool.submit(noop) for _ in range(n)])
    return n / t.seconds


def repeated(times: int, n: int, sync: str) -> list[Rates]:
    """:func:`durable_run` ``times`` times, each on a fresh uvloop event loop."""
    return [run(durable_run(n, sync)) for _ in range(times)]


def median_of(runs: list[Rates], field: str) -> float:
    """The median of one field over repeated runs."""
    return statistics.median(float(getattr(r, field)) for r in runs)


def print_runs(sync: str, runs: list[Rates]) -> None:
    """Detailed output: median (min-max) of each rate over the repeats."""
    print(f"synchronous={sync}, {len(runs)} run(s), tasks/s median (min-max):")
    for field in ("enqueue_batched", "enqueue_single", "drain"):
        print(f"  {field:16} {spread([getattr(r, field) for r in runs])}")


def durable_figures(sync: str, runs: list[Rates], n: int, ceiling: float) -> list[Figure]:
    """Figures for one synchronous mode; FULL (the default) ones are headlines."""
    drain_rate = median_of(runs, "drain")

    def figure(metric: str, value: float, unit: str, target: str = "") -> Figure:
        headline = sync == "FULL" or bool(target)
        return Figure(BENCH, f"{metric} ({sync})", value, unit, target, headline)

    return [
        figure(f"enqueue, batches of {BATCH}", median_of(runs, "enqueue_batched"), "tasks/s"),
        figure("enqueue, one by one", median_of(runs, "enqueue_single"), "tasks/s"),
        figure(f"drain {n:,} no-ops, 2 procs", drain_rate, "results/s", f"> {DRAIN_TARGET:,.0f}"),
        figure("drain / ProcessPoolExecutor", drain_rate / ceiling, "x"),
    ]


def measure(quick: bool) -> list[Figure]:
    """Every figure of this script."""
    n, times = (300, 1) if quick else (5_000, 3)
    figures: list[Figure] = []
    ceiling = statistics.median(executor_rate(n) for _ in range(times))
    print(f"ProcessPoolExecutor(2), {n:,} no-ops: {ceiling:,.0f} tasks/s")
    for sync in ("FULL", "NORMAL"):
        runs = repeated(times, n, sync)
        print_runs(sync, runs)
        figures += durable_figures(sync, runs, n, ceiling)
    bare = statistics.median(run(pool_rate(n)) for _ in range(times))
    print(f"ProcessPool alone (no storage, no supervisor): {bare:,.0f} tasks/s")
    figures += [
        Figure(BENCH, f"omniq_mp ProcessPool alone, {n:,} no-ops", bare, "tasks/s"),
        Figure(BENCH, f"ProcessPoolExecutor(2), {n:,} no-ops", ceiling, "tasks/s", headline=True),
    ]
    return figures


if __name__ == "__main__":
    main_of(measure, __doc__)
