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

For reference: the same drain with the in-memory backend (the supervisor and process pool
without SQLite), and the stdlib ``ProcessPoolExecutor(2)`` running the same N no-ops
(submit all, wait for all, after a warm-up) as the in-memory ceiling. Each durable run is
repeated (3 times, once with ``--quick``) and the median is reported.
"""

from __future__ import annotations

import concurrent.futures
import statistics
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from _common import Figure, Timer, parse_args, report, spread

from omniq_mp import AsyncOmniQ, Settings
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


@asynccontextmanager
async def fresh_store(backend: str = "sqlite", sync: str = "FULL") -> AsyncIterator[AsyncOmniQ]:
    """An opened producer (no embedded supervisor) over an empty store in a temp dir."""
    with tempfile.TemporaryDirectory(prefix="omniq-bench-") as base_dir:
        settings = Settings(
            backend=backend, base_dir=base_dir, procs=PROCS, sqlite_synchronous=sync
        )
        q = AsyncOmniQ(settings)
        await q.open()
        try:
            yield q
        finally:
            await q.close()


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
    async with fresh_store(sync=sync) as q:
        batched = await enqueue_batched(q, n)
        drained = await drain(q, n)
    async with fresh_store(sync=sync) as q:
        single = await enqueue_single(q, max(n // 5, 1))
    return Rates(batched, single, drained)


async def memory_drain(n: int) -> float:
    """The drain with the in-memory backend: supervisor and pool cost without SQLite."""
    async with fresh_store(backend="memory") as q:
        await q.enqueue_tasks([q.build(noop) for _ in range(n)])
        return await drain(q, n)


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
    return statistics.median(getattr(r, field) for r in runs)


def print_runs(sync: str, runs: list[Rates]) -> None:
    """Detailed output: median (min-max) of each rate over the repeats."""
    print(f"synchronous={sync}, {len(runs)} run(s), tasks/s median (min-max):")
    for field in ("enqueue_batched", "enqueue_single", "drain"):
        print(f"  {field:16} {spread([getattr(r, field) for r in runs])}")


def durable_figures(sync: str, runs: list[Rates], n: int, ceiling: float) -> list[Figure]:
    """Figures for one synchronous mode; FULL (the default) ones are headlines."""
    full = sync == "FULL"
    drain_rate = median_of(runs, "drain")
    return [
        Figure(
            BENCH,
            f"enqueue, batches of {BATCH} ({sync})",
            median_of(runs, "enqueue_batched"),
            "tasks/s",
            headline=full,
        ),
        Figure(
            BENCH,
            f"enqueue, one by one ({sync})",
            median_of(runs, "enqueue_single"),
            "tasks/s",
            headline=full,
        ),
        Figure(
            BENCH,
            f"drain {n} no-ops, 2 procs ({sync})",
            drain_rate,
            "results/s",
            f"> {DRAIN_TARGET:,.0f}",
            headline=True,
        ),
        Figure(
            BENCH, f"drain / ProcessPoolExecutor ({sync})", drain_rate / ceiling, "x", headline=full
        ),
    ]


def measure(quick: bool) -> list[Figure]:
    """Every figure of this script."""
    n, times = (300, 1) if quick else (5_000, 3)
    figures: list[Figure] = []
    ceiling = executor_rate(n)
    print(f"ProcessPoolExecutor(2), {n} no-ops: {ceiling:,.0f} tasks/s")
    for sync in ("FULL", "NORMAL"):
        runs = repeated(times, n, sync)
        print_runs(sync, runs)
        figures += durable_figures(sync, runs, n, ceiling)
    memory = statistics.median(run(memory_drain(n)) for _ in range(times))
    print(f"memory backend drain: {memory:,.0f} results/s")
    figures += [
        Figure(BENCH, f"drain {n} no-ops, memory backend", memory, "results/s"),
        Figure(BENCH, f"ProcessPoolExecutor(2), {n} no-ops", ceiling, "tasks/s", headline=True),
    ]
    return figures


def main() -> None:
    args = parse_args(__doc__)
    report(measure(args.quick), args.json)


if __name__ == "__main__":
    main()
