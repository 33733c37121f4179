"""What a large argument costs: one task whose call carries 1, 10 or 100 MiB.

Each size is enqueued to an idle store, SQLite (the default, fully synced) and then the
file store, and run on one worker process: the enqueue call (pickling the call and
storing it), the run (claim, the worker's copy, the settlement) and the ``get_result``
that follows, each timed alone, median of 3. Side by side, the stdlib
``ProcessPoolExecutor`` runs the same call in memory, with nothing stored. The task is
``len``, so what is measured is moving the bytes, not work on them. Payloads of 1 MiB or
more live in side files (omniq_mp/storage/side_files.py), not in the row or entry that
the claim and the settlement rewrite.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import statistics
import time
import warnings
from pathlib import Path

from _common import Figure, main_of, scratch_dir

from omniq_mp import AsyncOmniQ, LargePayloadWarning, Settings

BENCH = "large_payload"
BACKENDS = ("sqlite", "file")
MiB = 2**20


async def omniq_once(backend: str, base_dir: Path, data: bytes) -> tuple[float, float, float]:
    """(enqueue, run, get_result) seconds of ``len(data)`` as one task."""
    q = AsyncOmniQ(Settings(backend=backend, base_dir=base_dir, procs=1))
    await q.open()
    try:
        began = time.perf_counter()
        task_id = await q.enqueue(len, data)
        enqueued = time.perf_counter()
        async with q.worker_pool(concurrency=1) as workers:
            ready = time.perf_counter()
            assert await workers.process_tasks(limit=1) == 1
            ran = time.perf_counter()
        assert await q.get_result(task_id, timeout=60) == len(data)
        got = time.perf_counter()
    finally:
        await q.close()
    return enqueued - began, ran - ready, got - ran


def pool_once(pool: concurrent.futures.Executor, data: bytes) -> float:
    """Seconds for the stdlib pool to run ``len(data)``."""
    began = time.perf_counter()
    assert pool.submit(len, data).result() == len(data)
    return time.perf_counter() - began


def measure(quick: bool) -> list[Figure]:
    """Enqueue, run and read times per store and payload size, and the ratio of enqueue
    plus run to the in-memory pool."""
    sizes = (1, 10) if quick else (1, 10, 100)
    repeats = 1 if quick else 3
    figures: list[Figure] = []
    warnings.simplefilter("ignore", LargePayloadWarning)  # large on purpose
    with concurrent.futures.ProcessPoolExecutor(1) as pool:
        pool.submit(len, b"").result()  # its worker started
        for size in sizes:
            data = os.urandom(size * MiB)
            in_memory = [pool_once(pool, data) * 1000 for _ in range(repeats)]
            figures.append(
                Figure(
                    BENCH,
                    f"{size} MiB argument: ProcessPoolExecutor, in memory",
                    statistics.median(in_memory),
                    "ms",
                )
            )
            for backend in BACKENDS:
                steps: list[list[float]] = [[], [], []]
                for _ in range(repeats):
                    with scratch_dir() as base_dir:
                        times = asyncio.run(omniq_once(backend, base_dir, data))
                    for step, seconds in zip(steps, times, strict=True):
                        step.append(seconds * 1000)
                enqueue, run, read = (statistics.median(step) for step in steps)
                label = f"{size} MiB argument, {backend}"
                figures += [
                    Figure(BENCH, f"{label}: enqueue", enqueue, "ms"),
                    Figure(BENCH, f"{label}: run", run, "ms"),
                    Figure(BENCH, f"{label}: get_result", read, "ms"),
                    Figure(
                        BENCH,
                        f"{label}: enqueue + run vs the in-memory pool",
                        (enqueue + run) / statistics.median(in_memory),
                        "x",
                        headline=size == sizes[-1] and backend == "sqlite",
                    ),
                ]
    return figures


if __name__ == "__main__":
    main_of(measure, __doc__)
