"""Tiny task bodies that behave (and misbehave) in worker processes.

They live in an importable module so cloudpickle pickles them by reference and the
worker imports them, as it would a user's task module.
"""

from __future__ import annotations

import asyncio
import ctypes
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any


def add(a: int, b: int) -> int:
    return a + b


async def async_add(a: int, b: int) -> int:
    await asyncio.sleep(0)
    return a + b


def whoami() -> int:
    return os.getpid()


def scheduling_policy() -> int:
    return os.sched_getscheduler(0)


def child_scheduling_policy() -> int:
    """The scheduling class of a process this task starts."""
    script = "import os; print(os.sched_getscheduler(0))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, check=True)
    return int(done.stdout)


def divide_by_zero() -> float:
    return 1 / 0


def raise_system_exit() -> None:
    raise SystemExit(3)


def raise_keyboard_interrupt() -> None:
    raise KeyboardInterrupt


def sleep_for(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def busy_loop() -> None:
    while True:
        pass


def ignore_sigterm_and_loop() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        time.sleep(0.01)


def hard_exit(code: int) -> None:
    os._exit(code)


def segfault() -> None:
    ctypes.string_at(0)


def return_lock() -> Any:
    return threading.Lock()


def _sleep_forever() -> None:
    time.sleep(1000)


def _start_grandchildren(pid_file: str) -> None:
    """Start a ``sleep`` subprocess and a forked multiprocessing child; record their pids."""
    popen = subprocess.Popen(["sleep", "1000"])
    # Workers are started with daemon=True, and multiprocessing refuses children of a
    # daemonic process ("daemonic processes are not allowed to have children"); lift that
    # flag here so the pool's tree kill is what gets tested.
    multiprocessing.current_process().daemon = False
    forked = multiprocessing.get_context("fork").Process(target=_sleep_forever, daemon=False)
    forked.start()
    tmp = Path(pid_file + ".tmp")
    tmp.write_text(f"{popen.pid} {forked.pid}")
    tmp.replace(pid_file)  # atomic: the test never reads half a file


def grandchildren_then_sleep(pid_file: str, seconds: float) -> None:
    _start_grandchildren(pid_file)
    time.sleep(seconds)


def grandchildren_then_exit(pid_file: str) -> None:
    _start_grandchildren(pid_file)
    os._exit(5)


def _explode() -> None:
    raise ValueError("reconstruction exploded")


class UnpicklesBadly:
    """Pickles fine in the producer; raises when the worker unpickles it."""

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return (_explode, ())


def ignore_argument(value: Any) -> str:
    return "unreachable"


def record_pid_then_sleep(pid_file: str, seconds: float) -> None:
    """Write this worker's pid (atomically), then sleep."""
    tmp = Path(pid_file + ".tmp")
    tmp.write_text(str(os.getpid()))
    tmp.replace(pid_file)
    time.sleep(seconds)


def catastrophic_regex() -> bool:
    """Exponential backtracking inside the C regex engine: holds the GIL for minutes."""
    return re.match(r"(a+)+$", "a" * 64 + "b") is not None


def allocate_mib(mib: int, hold: float = 2.0) -> int:
    """Make ``mib`` MiB resident (written, not just reserved), hold it, return ``mib``."""
    block = bytearray(b"\x01") * (mib * 2**20)
    time.sleep(hold)
    return len(block) // 2**20


def blob_kib(kib: int) -> bytes:
    """A result of ``kib`` KiB."""
    return b"r" * (kib * 1024)


def write_pid_then_sleep(pid_file: str, seconds: float = 60.0) -> None:
    """Say which process runs the task, then run long."""
    Path(pid_file).write_text(str(os.getpid()))
    time.sleep(seconds)


def sleep_then_exit(seconds: float, code: int) -> None:
    """Die mid-task, some time after starting (a task sent ahead is queued meanwhile)."""
    time.sleep(seconds)
    os._exit(code)


def mark_ran(path: str) -> str:
    """Leave a file behind: proof that the task ran."""
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    return path


def append_line(path: str, text: str, seconds: float = 0.1) -> None:
    """Sleep ``seconds``, then append ``text`` as a line to ``path``: the order tasks ran."""
    time.sleep(seconds)
    with open(path, "a") as f:
        f.write(f"{text}\n")


def mark_then_wait_for(marker: str, gate: str) -> None:
    """Leave ``marker`` behind, then hold the worker until ``gate`` exists."""
    Path(marker).write_text(str(os.getpid()))
    while not os.path.exists(gate):
        time.sleep(0.005)
