"""Task functions every system in ``compare.py`` runs, and the Huey instance whose
consumer imports them (Huey finds tasks by module name, so they live in a module).

The Huey database path comes from ``BENCH_HUEY_DB`` so the consumer subprocess and the
benchmark open the same file.
"""

from __future__ import annotations

import os
import time

from huey import SqliteHuey

huey = SqliteHuey(
    "bench",
    filename=os.environ.get("BENCH_HUEY_DB", "/tmp/omniq-bench-huey.db"),
    fsync=True,  # synchronous=FULL, the same durability as omniq_mp's default
    journal_mode="wal",
)


def noop() -> int:
    """Returns 1: Huey keeps no result for None, and we count stored results."""
    return 1


def burn(seconds: float) -> int:
    """Spin the CPU for ``seconds`` (no sleeping: this is CPU-bound work)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return 1


def sleep(seconds: float) -> int:
    """Sleep (for timeout measurements)."""
    time.sleep(seconds)
    return 1


huey_noop = huey.task()(noop)
huey_burn = huey.task()(burn)
