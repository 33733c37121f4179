"""A task that leaves a trace of every execution in a shared ledger file.

Worker processes of several supervisors run :func:`record`; each call appends

    start <arg> <pid> <monotonic ns>
    end <arg> <pid> <monotonic ns>

to the file named by ``$OMNIQ_TEST_LEDGER``. The test reading it learns which argument
ran where, how often, and when: enough to prove that no task ran twice at the same time.
CLOCK_MONOTONIC is one clock for every process of the host, so times of different
processes compare.
"""

from __future__ import annotations

import os
import time

__all__ = ["LEDGER_ENV", "record"]

LEDGER_ENV = "OMNIQ_TEST_LEDGER"

# One descriptor per worker process, opened on its first task: a worker runs thousands of
# these tasks, and an open() per line would be most of their cost.
_fd: int | None = None


def _ledger() -> int:
    global _fd
    if _fd is None:
        _fd = os.open(os.environ[LEDGER_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    return _fd


def _append(event: str, arg: int) -> None:
    # One write() per line on an O_APPEND descriptor: the kernel places each write at the
    # end of the file atomically, so lines of concurrent workers never interleave.
    line = f"{event} {arg} {os.getpid()} {time.monotonic_ns()}\n".encode()
    os.write(_ledger(), line)


def record(arg: int) -> int:
    """Log the start and the end of this execution; return ``arg``."""
    _append("start", arg)
    _append("end", arg)
    return arg
