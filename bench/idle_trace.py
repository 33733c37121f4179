"""Where an idle enqueue-to-result round trip spends its time, step by step.

A producer in this process enqueues a no-op and waits for its result, with a pause
between tasks so every process and thread is asleep when the next one arrives (the
``idle enqueue-to-result`` row of ``compare.py``). The supervisor runs in a child
process started from this file (``--supervisor DIR``) with a clock stamp at each step of
the trip: the wake-up datagram arriving, the claim's transaction, the RUN frame sent,
the worker's frames received, the outcome's fully synced commit, the poke to waiting
clients. Printed: the median time between consecutive steps, and the same for a bare
``sqlite3`` commit with and without fsync after the same pause, which is the floor under
the two synced commits (the enqueue and the outcome) that every round trip needs.

The stamps wrap internal methods; this is a diagnostic, not an API.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import Figure, env_for, main_of, scratch_dir
from anchor_tasks import noop

from omniq_mp import AsyncOmniQ, OmniQ, Settings

BENCH = "idle_trace"
PAUSE = 0.05  # seconds between tasks: long enough for every thread to sleep
MARKS = "marks.json"


# -- the traced supervisor (in its own process) ------------------------------------------


def supervise(base_dir: Path) -> None:
    """Run a supervisor on ``base_dir`` until SIGTERM, then write its stamps."""
    from omniq_mp import pool, wakeup
    from omniq_mp.runtime import run
    from omniq_mp.storage import sqlite

    marks: list[tuple[str, float]] = []

    def stamp(label: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def stamped(*args: Any, **kwargs: Any) -> Any:
            marks.append((label, time.time()))
            return method(*args, **kwargs)

        return stamped

    def stamp_both(label: str, method: Callable[..., Any]) -> Callable[..., Any]:
        async def stamped(*args: Any, **kwargs: Any) -> Any:
            marks.append((f"{label} begins", time.time()))
            result = await method(*args, **kwargs)
            marks.append((f"{label} ends", time.time()))
            return result

        return stamped

    listener, channel, store = wakeup.WakeListener, pool._Channel, sqlite.SQLiteStorage
    listener._readable = stamp("poke arrives", listener._readable)  # type: ignore[method-assign]
    channel.send = stamp("RUN frame sent", channel.send)  # type: ignore[method-assign]
    channel.data_received = stamp("worker frames in", channel.data_received)  # type: ignore[method-assign]
    store.claim = stamp_both("claim", store.claim)  # type: ignore[method-assign]
    store.settle = stamp_both("outcome commit", store.settle)  # type: ignore[method-assign]

    async def main() -> None:
        q = AsyncOmniQ(Settings(base_dir=base_dir, procs=2))
        await q.open()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        async with q.worker_pool(concurrency=2) as workers:
            job = asyncio.create_task(workers.process_tasks())
            await stop.wait()
            workers.request_stop()
            await job
        await q.close()
        (base_dir / MARKS).write_text(json.dumps(marks))

    run(main())


# -- the producer and client (this process) ----------------------------------------------


# The steps of one trip, in order; each is the first stamp of its kind after the step
# before (a supervisor also makes claims that find nothing, and reads more than once).
TRIP = (
    "poke arrives",  # the producer pokes right after its commit, before enqueue returns
    "claim begins",
    "claim ends",
    "RUN frame sent",
    "worker frames in",
    "outcome commit begins",
    "outcome commit ends",
    "result returns",
)


def trace(samples: int) -> tuple[dict[str, list[float]], list[float], int]:
    """Milliseconds spent reaching each step of :data:`TRIP` from the one before, over
    the trips that passed every step; each enqueue call's milliseconds; the trip count."""
    with scratch_dir() as base_dir:
        command = [sys.executable, __file__, "--supervisor", str(base_dir)]
        supervisor = subprocess.Popen(command, env=env_for(base_dir))
        try:
            trips = run_trips(base_dir, samples)
        finally:
            supervisor.send_signal(signal.SIGTERM)
            supervisor.wait(timeout=60)
        marks = [(label, float(at)) for label, at in json.loads((base_dir / MARKS).read_text())]
    steps: dict[str, list[float]] = {step: [] for step in TRIP}
    for began, _, done in trips:
        stamps = [*marks, ("result returns", done)]
        at, gaps = began, []
        for step in TRIP:
            reached = min((t for label, t in stamps if label == step and t >= at), default=None)
            if reached is None or reached > done:
                break  # this trip skipped a step (a poll found the task, not a poke)
            gaps.append((reached - at) * 1000)
            at = reached
        else:
            for step, gap in zip(TRIP, gaps, strict=True):
                steps[step].append(gap)
    enqueues = [(enqueued - began) * 1000 for began, enqueued, _ in trips]
    return steps, enqueues, len(trips)


def run_trips(base_dir: Path, samples: int) -> list[tuple[float, float, float]]:
    q = OmniQ(base_dir=base_dir)
    try:
        deadline = time.monotonic() + 60
        while not q.get_worker_stats():
            if time.monotonic() > deadline:
                raise RuntimeError("the traced supervisor did not start")
            time.sleep(0.01)
        for _ in range(3):  # warm
            q.get_result(q.enqueue(noop), timeout=30)
        trips = []
        for _ in range(samples):
            time.sleep(PAUSE)
            began = time.time()
            task_id = q.enqueue(noop)
            enqueued = time.time()
            if q.get_result(task_id, timeout=30) != 1:
                raise RuntimeError("a traced task returned a wrong result")
            trips.append((began, enqueued, time.time()))
        return trips
    finally:
        q.close()


def bare_commit_ms(synchronous: str, samples: int) -> float:
    """Median milliseconds of a one-row ``sqlite3`` commit after the same pause."""
    with scratch_dir() as base_dir:
        conn = sqlite3.connect(base_dir / "bare.db", isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB)")
        times = []
        for _ in range(samples):
            time.sleep(PAUSE)
            began = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t (body) VALUES (?)", (b"x" * 200,))
            conn.execute("COMMIT")
            times.append((time.perf_counter() - began) * 1000)
        conn.close()
    return statistics.median(times)


def measure(quick: bool) -> list[Figure]:
    samples = 15 if quick else 100
    steps, enqueues, trips = trace(samples)
    complete = len(steps[TRIP[-1]])
    figures = [
        Figure(BENCH, "enqueue call, commit included (p50)", statistics.median(enqueues), "ms")
    ]
    previous = "enqueue called"
    for step, gaps in steps.items():
        label = f"{previous} -> {step} (p50 of {complete}/{trips} trips)"
        figures.append(Figure(BENCH, label, statistics.median(gaps) if gaps else 0.0, "ms"))
        previous = step
    totals = [sum(gaps) for gaps in zip(*steps.values(), strict=True)]
    figures.append(Figure(BENCH, "whole round trip (p50)", statistics.median(totals), "ms"))
    for synchronous in ("FULL", "NORMAL"):
        figures.append(
            Figure(
                BENCH,
                f"bare sqlite3 one-row commit after {PAUSE * 1000:.0f} ms idle, {synchronous}",
                bare_commit_ms(synchronous, samples),
                "ms",
            )
        )
    return figures


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--supervisor":
        supervise(Path(sys.argv[2]))
    else:
        main_of(measure, __doc__)
