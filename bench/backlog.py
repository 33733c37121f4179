"""A 100,000-task backlog (fault matrix row 31): storing it, claiming from it, draining it.

1. ``enqueue_many`` 100,000 no-op tasks in batches of 1,000 (10,000 with ``--quick``):
   the time it takes.
2. Claim latency against the backlog's size: 200 claims of 2 tasks each (each claim a
   committed transaction, its tasks then released) with 1,000 tasks queued and again
   with the whole backlog queued, in separate stores: p50 and p99 of each, and their
   ratio (the claim reads an index, so the ratio should stay near 1).
3. ``omniq-mp workers --burst --procs 2`` drains the backlog: its peak RSS (VmHWM, read
   as it runs), the WAL's largest size, the time, and that every task ended COMPLETED.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from _common import Figure, env_for, format_number, main_of, percentile, scratch_dir
from anchor_tasks import noop

from omniq_mp import AsyncOmniQ, OmniQ, Settings
from omniq_mp.runtime import run

BENCH = "backlog"
CLAIMS = 200


def fill(base_dir: Path, n: int) -> float:
    """Store ``n`` no-ops with enqueue_many (1,000 per transaction); returns seconds."""
    q = OmniQ(Settings(base_dir=base_dir, event_storage_type="none"))
    try:
        began = time.perf_counter()
        q.enqueue_many(noop, [()] * n)  # 1,000 per transaction
        took = time.perf_counter() - began
        assert q.stats().pending == n
    finally:
        q.close()
    return took


def claim_times(base_dir: Path) -> list[float]:
    """Milliseconds of CLAIMS claims of 2 tasks from the store, each given back after."""

    async def main() -> list[float]:
        q = AsyncOmniQ(Settings(base_dir=base_dir, event_storage_type="none"))
        await q.open()
        times = []
        try:
            for _ in range(CLAIMS):
                began = time.perf_counter()
                tasks = await q.queue.claim(("default",), 2, "bench", 30.0)
                times.append((time.perf_counter() - began) * 1000)
                await q.storage.settle([q.queue.release_settlement(t) for t in tasks])
        finally:
            await q.close()
        return times

    return run(main())


def drain(base_dir: Path, n: int) -> tuple[float, float, float]:
    """(seconds, peak supervisor RSS MiB, largest WAL MiB) of a burst drain of ``n``."""
    env = env_for(base_dir, OMNIQ_EVENT_STORAGE_TYPE="none")
    wal = base_dir / "omniq.db-wal"
    peak_wal = 0
    began = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "omniq_mp", "workers", "--burst", "--procs", "2"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    hwm = 0.0
    while proc.poll() is None:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            hwm = max(hwm, int(status.split("VmHWM:")[1].split()[0]) / 1024)
        except (OSError, IndexError, ValueError):
            pass
        if wal.exists():
            peak_wal = max(peak_wal, wal.stat().st_size)
        time.sleep(0.05)
    took = time.perf_counter() - began
    if proc.returncode != 0:
        raise RuntimeError(f"the drain exited {proc.returncode}")
    q = OmniQ(Settings(base_dir=base_dir, event_storage_type="none"))
    try:
        stats = q.stats()
        if stats.completed != n:
            raise RuntimeError(f"{stats.completed} of {n} tasks COMPLETED")
    finally:
        q.close()
    return took, hwm, peak_wal / 2**20


def measure(quick: bool) -> list[Figure]:
    n = 10_000 if quick else 100_000
    with scratch_dir() as scratch:
        small, big = scratch / "small", scratch / "big"
        fill(small, 1_000)
        fill_s = fill(big, n)
        print(f"enqueue_many {n:,} in batches of 1,000: {fill_s:.1f} s")
        at_1k, at_big = claim_times(small), claim_times(big)
        p50s = (percentile(at_1k, 50), percentile(at_big, 50))
        p99s = (percentile(at_1k, 99), percentile(at_big, 99))
        print(f"claim of 2 with 1,000 queued: p50 {p50s[0]:.2f} ms, p99 {p99s[0]:.2f} ms")
        print(f"claim of 2 with {n:,} queued: p50 {p50s[1]:.2f} ms, p99 {p99s[1]:.2f} ms")
        took, hwm, wal = drain(big, n)
        print(f"drain of {n:,} by 2 processes: {took:.1f} s ({format_number(n / took)}/s), "
              f"supervisor peak RSS {hwm:.0f} MiB, WAL at most {wal:.1f} MiB")  # fmt: skip
    return [
        Figure(BENCH, f"enqueue_many {n:,}, batches of 1,000", fill_s, "s"),
        Figure(BENCH, "claim p99, 1,000 queued", p99s[0], "ms"),
        Figure(BENCH, f"claim p99, {n:,} queued", p99s[1], "ms", headline=True),
        Figure(BENCH, f"claim p99 ratio, {n:,} / 1,000 queued", p99s[1] / p99s[0], "x"),
        Figure(BENCH, f"drain of {n:,}, supervisor peak RSS", hwm, "MiB", headline=True),
        Figure(BENCH, f"drain of {n:,}, largest WAL", wal, "MiB"),
        Figure(BENCH, f"drain of {n:,}", n / took, "tasks/s"),
    ]


if __name__ == "__main__":
    main_of(measure, __doc__)
