"""Task functions every system in ``compare.py`` runs (importable by worker processes of
every kind, so they live in a module; Huey's wrappers are in huey_tasks.py)."""

from __future__ import annotations

import os
import time


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


def hold(release: str, limit: float) -> int:
    """Keep a worker busy until the file ``release`` exists (or ``limit`` seconds pass):
    a backlog stays queued behind it, and the pool can then shut down cleanly."""
    end = time.monotonic() + limit
    while not os.path.exists(release) and time.monotonic() < end:
        time.sleep(0.01)
    return 1
