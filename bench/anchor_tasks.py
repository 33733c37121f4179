"""Task functions every system in ``compare.py`` runs (importable by worker processes of
every kind, so they live in a module; Huey's wrappers are in huey_tasks.py)."""

from __future__ import annotations

import os
import signal
import socket
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


def overrun(report: str, ignore_term: bool = False) -> int:
    """Send this process's pid and start time to the datagram socket ``report``, then
    sleep far past any timeout; with ``ignore_term`` only SIGKILL stops it. The start
    time is ``time.monotonic()``, one clock for every process of the machine, so whoever
    reads the report can date the task's deadline and the process's exit alike."""
    if ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        sender.sendto(f"{os.getpid()} {time.monotonic()!r}".encode(), report)
    time.sleep(10)
    return 1


def hold(release: str, limit: float) -> int:
    """Keep a worker busy until the file ``release`` exists (or ``limit`` seconds pass):
    a backlog stays queued behind it, and the pool can then shut down cleanly."""
    end = time.monotonic() + limit
    while not os.path.exists(release) and time.monotonic() < end:
        time.sleep(0.01)
    return 1
