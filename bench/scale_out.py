"""Scale-out on PostgreSQL: no-op throughput of 1, 2 and 3 supervisors sharing one queue.

For each supervisor count, in a schema of its own on the PostgreSQL server (dropped
afterwards; ``$OMNIQ_BENCH_POSTGRES_DSN``, else ``$OMNIQ_TEST_POSTGRES_DSN``, else the
loopback server's database ``test``):

* that many ``python -m omniq_mp workers --backend postgres --procs 1`` processes are
  started and waited for (each has written its heartbeat, so its worker is up): start-up
  is not measured;
* N no-op tasks (5,000; 500 with ``--quick``) are stored in one transaction, whose commit
  wakes the supervisors (LISTEN/NOTIFY);
* throughput = N / (the latest ``finished_at`` among the tasks - the time the commit
  returned to the producer).

One worker process per supervisor: on a 2-core machine three supervisors with one worker
each already oversubscribe the cores (with PostgreSQL and the producer on them too), so
more processes per supervisor would measure the contention, not the scale-out. Events are
off (``OMNIQ_EVENT_STORAGE_TYPE=none``). Each count is repeated (3 times, once with
``--quick``) and the median is reported, with its ratio to the median of one supervisor.
Without a reachable PostgreSQL the script prints why and reports no figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from _common import Figure, format_number, markdown_table, parse_args, report, scratch_dir, spread

from omniq_mp import AsyncOmniQ, Settings, TaskStatus
from omniq_mp.errors import StorageError
from omniq_mp.runtime import run
from omniq_mp.storage.postgres import PostgresStorage

BENCH = "scale_out"
PROCS = 1
COUNTS = (1, 2, 3)
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
START_BOUND = 60.0  # seconds for the supervisors to come up
DRAIN_BOUND = 300.0  # seconds for one run to finish its tasks
POLL = 0.1  # seconds between stats queries while waiting


def noop() -> None:
    """The task: does nothing, returns None (pickled by value: no import path needed)."""


def bench_dsn() -> str:
    """The PostgreSQL server to measure on."""
    for name in ("OMNIQ_BENCH_POSTGRES_DSN", "OMNIQ_TEST_POSTGRES_DSN"):
        if os.environ.get(name):
            return os.environ[name]
    return DEFAULT_DSN


def unreachable(dsn: str) -> str | None:
    """Why the server cannot be used, or None if its port answers."""
    parts = urlsplit(dsn)
    host, port = parts.hostname or "127.0.0.1", parts.port or 5432
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return None
    except OSError as exc:
        return f"PostgreSQL is not reachable at {host}:{port} ({exc.strerror or exc})"


# -- supervisors -----------------------------------------------------------------------------


@contextlib.contextmanager
def supervisors(
    count: int, dsn: str, schema: str, logs: Path
) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``count`` supervisors on ``schema`` for the duration of the block; SIGTERM and wait
    for them afterwards. Output goes to ``logs/<schema>-<i>.log``: a pipe nobody reads
    could fill up and stall a supervisor mid-measurement."""
    env = dict(os.environ)
    env.update(
        OMNIQ_POSTGRES_SCHEMA=schema,
        OMNIQ_EVENT_STORAGE_TYPE="none",
        OMNIQ_LOG_LEVEL="WARNING",
    )
    command = [sys.executable, "-m", "omniq_mp", "workers", "--backend", "postgres"]
    command += ["--dsn", dsn, "--procs", str(PROCS)]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(count):
            with (logs / f"{schema}-{i}.log").open("wb") as log:
                procs.append(subprocess.Popen(command, stdout=log, stderr=log, env=env))
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                print(f"  note: supervisor {p.pid} ignored SIGTERM for 30s; killed")
                p.kill()
                p.wait()


def log_tails(logs: Path, schema: str) -> str:
    """The end of each supervisor's output of this run, for error messages."""
    tails = [p.read_text(errors="replace")[-800:] for p in sorted(logs.glob(f"{schema}-*.log"))]
    return "\n---\n".join(tails)


async def wait_online(
    q: AsyncOmniQ, procs: Sequence[subprocess.Popen[bytes]], logs: Path, schema: str
) -> None:
    """Until every supervisor has a heartbeat row (its workers are started); raises at
    once if one exits, or after START_BOUND seconds."""
    deadline = time.monotonic() + START_BOUND
    while True:
        live = await q.storage.workers(time.time() - 30)
        if {w.pid for w in live} >= {p.pid for p in procs}:
            return
        if any(p.poll() is not None for p in procs):
            raise RuntimeError(f"a supervisor exited at start:\n{log_tails(logs, schema)}")
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"supervisors not online after {START_BOUND}s:\n{log_tails(logs, schema)}"
            )
        await asyncio.sleep(POLL)


async def wait_completed(q: AsyncOmniQ, n: int) -> None:
    """Until ``n`` tasks are COMPLETED (bounded)."""
    deadline = time.monotonic() + DRAIN_BOUND
    while (await q.stats()).completed < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{n} tasks not done after {DRAIN_BOUND}s: {await q.stats()}")
        await asyncio.sleep(POLL)


# -- one run ---------------------------------------------------------------------------------


async def drop(dsn: str, schema: str) -> None:
    """DROP SCHEMA ... CASCADE: the run's tables go."""
    storage = PostgresStorage(dsn, schema=schema)
    try:
        await storage.drop()
    finally:
        await storage.close()


async def one_run(count: int, n: int, dsn: str, logs: Path) -> float:
    """``count`` supervisors drain ``n`` no-ops in a fresh schema; returns tasks/s."""
    schema = f"omniq_scale_{uuid.uuid4().hex[:8]}"
    settings = Settings(
        backend="postgres", dsn=dsn, postgres_schema=schema, event_storage_type="none"
    )
    q = AsyncOmniQ(settings)
    try:
        await q.open()  # creates the schema before the supervisors look for it
        batch = [q.build(noop) for _ in range(n)]  # pickled before the clock starts
        with supervisors(count, dsn, schema, logs) as procs:
            await wait_online(q, procs, logs, schema)
            await q.enqueue_tasks(batch)  # one transaction; its commit wakes them
            committed = time.time()
            await wait_completed(q, n)
        done = await q.storage.list_tasks(TaskStatus.COMPLETED, None, n)
        last = max(t.finished_at or 0.0 for t in done)
        return n / (last - committed)
    finally:
        await q.close()
        await drop(dsn, schema)


# -- the script ------------------------------------------------------------------------------


def measure(quick: bool, dsn: str) -> list[Figure]:
    """Every figure of this script."""
    n, times = (500, 1) if quick else (5_000, 3)
    medians: dict[int, float] = {}
    with scratch_dir() as logs:
        for count in COUNTS:
            rates = [run(one_run(count, n, dsn, logs)) for _ in range(times)]
            medians[count] = statistics.median(rates)
            print(f"{count} supervisor(s) x {PROCS} proc, {n:,} no-ops: {spread(rates)} tasks/s")
    base = medians[COUNTS[0]]
    rows = [
        [str(c), str(c * PROCS), format_number(medians[c]), f"{format_number(medians[c] / base)}x"]
        for c in COUNTS
    ]
    print()
    print(markdown_table(["Supervisors", "Worker processes", "tasks/s", "vs 1 supervisor"], rows))
    figures: list[Figure] = []
    for c in COUNTS:
        label = f"{c} supervisor{'s' if c > 1 else ''} x {PROCS} proc"
        metric = f"PostgreSQL drain {n:,} no-ops, {label}"
        figures.append(Figure(BENCH, metric, medians[c], "tasks/s", headline=True))
        if c != COUNTS[0]:
            ratio = medians[c] / base
            figures.append(Figure(BENCH, f"{label} / 1 supervisor", ratio, "x", headline=c == 3))
    return figures


def main() -> None:
    args = parse_args(__doc__)
    dsn = bench_dsn()
    reason = unreachable(dsn)
    figures: list[Figure] = []
    if reason is not None:
        print(f"skipped: {reason}")
    else:
        try:
            figures = measure(args.quick, dsn)
        except StorageError as exc:  # reachable but unusable (auth, missing database)
            print(f"skipped: {exc}")
    report(figures, args.json)


if __name__ == "__main__":
    main()
