"""Task functions every system in ``compare.py`` runs (importable by worker processes of
every kind, so they live in a module; Huey's wrappers are in huey_tasks.py)."""

from __future__ import annotations

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
