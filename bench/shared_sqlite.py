"""Several supervisors on one SQLite file (fault matrix row 17): 1 supervisor with 2
worker processes against 2 and 3 supervisors with 1 each, all on the same store.

Each configuration drains the same mixed workload: 5,000 CPU tasks of about 2 ms and
200 tasks sleeping 20 ms (500 and 20 with ``--quick``), stored in one transaction after
the supervisors are up. Printed for each: the throughput (tasks / (last ``finished_at`` -
the commit)), its ratio to 1 supervisor x 2 processes, the most starts any task had
(every task must start exactly once: nothing is injected), and how many lines of the
supervisors' logs at WARNING or above mention a locked database (none may reach them:
SQLite's busy timeout and the store's retries absorb the contention). Each is repeated
(3 times, once with ``--quick``) and the median reported. Events are off.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from _common import (
    Figure,
    env_for,
    format_number,
    main_of,
    markdown_table,
    scratch_dir,
    spread,
)
from anchor_tasks import burn, sleep

from omniq_mp import AsyncOmniQ, Settings, TaskStatus
from omniq_mp.runtime import run

BENCH = "shared_sqlite"
CONFIGS = ((1, 2), (2, 1), (3, 1))  # (supervisors, worker processes each)
START_BOUND = 60.0
DRAIN_BOUND = 300.0


@contextlib.contextmanager
def supervisors(count: int, procs: int, base_dir: Path) -> Iterator[list[Path]]:
    """``count`` supervisors on ``base_dir`` for the block; yields their log files."""
    # WARNING: the "locked" lines counted below are those a user would see.
    env = env_for(base_dir, OMNIQ_EVENT_STORAGE_TYPE="none", OMNIQ_LOG_LEVEL="WARNING")
    command = [sys.executable, "-m", "omniq_mp", "workers", "--procs", str(procs)]
    running: list[subprocess.Popen[bytes]] = []
    logs = [base_dir.parent / f"{base_dir.name}-{i}.log" for i in range(count)]
    try:
        for log_path in logs:
            with log_path.open("wb") as log:
                running.append(subprocess.Popen(command, stdout=log, stderr=log, env=env))
        yield logs
    finally:
        for p in running:
            p.send_signal(signal.SIGTERM)
        for p in running:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


async def one_run(
    count: int, procs: int, n_cpu: int, n_sleep: int, base_dir: Path
) -> tuple[float, int, int]:
    """(tasks/s, most starts of one task, 'locked' lines in the logs)."""
    q = AsyncOmniQ(Settings(base_dir=base_dir, event_storage_type="none"))
    await q.open()
    try:
        batch = [q.build(burn, 0.002) for _ in range(n_cpu)]
        batch += [q.build(sleep, 0.02) for _ in range(n_sleep)]
        total = len(batch)
        with supervisors(count, procs, base_dir) as logs:
            deadline = time.monotonic() + START_BOUND
            while len(await q.storage.workers(time.time() - 30)) < count:
                if time.monotonic() > deadline:
                    raise RuntimeError("supervisors not online: " + logs[0].read_text()[-800:])
                await asyncio.sleep(0.1)
            await q.enqueue_tasks(batch)
            committed = time.time()
            deadline = time.monotonic() + DRAIN_BOUND
            while (await q.stats()).completed < total:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"not drained: {await q.stats()}")
                await asyncio.sleep(0.1)
            locked = sum(
                "locked" in line.lower()
                for log in logs
                for line in log.read_text(errors="replace").splitlines()
            )
        done = await q.storage.list_tasks(TaskStatus.COMPLETED, None, total)
        last = max(t.finished_at or 0.0 for t in done)
        return total / (last - committed), max(t.attempts for t in done), locked
    finally:
        await q.close()


def measure(quick: bool) -> list[Figure]:
    """Every figure of this script."""
    n_cpu, n_sleep, times = (500, 20, 1) if quick else (5_000, 200, 3)
    medians: dict[tuple[int, int], float] = {}
    most_starts, locked_lines = 0, 0
    with scratch_dir() as scratch:
        for count, procs in CONFIGS:
            results = [
                run(one_run(count, procs, n_cpu, n_sleep, scratch / f"s{count}-{i}" / "store"))
                for i in range(times)
            ]
            rates = [r[0] for r in results]
            most_starts = max(most_starts, *(r[1] for r in results))
            locked_lines += sum(r[2] for r in results)
            medians[(count, procs)] = statistics.median(rates)
            print(f"{count} supervisor(s) x {procs} proc: {spread(rates)} tasks/s")
    base = medians[CONFIGS[0]]
    rows = [
        [
            str(c),
            str(p),
            format_number(medians[(c, p)]),
            f"{format_number(medians[(c, p)] / base)}x",
        ]
        for c, p in CONFIGS
    ]
    print()
    print(markdown_table(["Supervisors", "Processes each", "tasks/s", "vs 1 x 2"], rows))
    print(f"\nmost starts of one task: {most_starts} (1 expected); "
          f"'locked' lines at WARNING or above: {locked_lines} (0 expected)")  # fmt: skip
    figures = [
        Figure(BENCH, f"{c} supervisor(s) x {p} proc, mixed {n_cpu + n_sleep:,}", medians[(c, p)],
               "tasks/s", headline=c == 2)
        for c, p in CONFIGS
    ]  # fmt: skip
    figures.append(Figure(BENCH, "2 supervisors x 1 / 1 x 2", medians[(2, 1)] / base, "x"))
    figures.append(Figure(BENCH, "most starts of one task", most_starts, "starts"))
    figures.append(Figure(BENCH, "'locked' log lines", locked_lines, "lines"))
    return figures


if __name__ == "__main__":
    main_of(measure, __doc__)
