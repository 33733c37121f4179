"""Process trees and signals: find a worker's descendants, signal them, name an exit.

Linux first: the tree walk reads ``/proc/<pid>/task/*/children`` (cost: the size of the
tree), with psutil's host-wide walk as the fallback elsewhere.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

import psutil

__all__ = ["descendants", "describe_exit", "signal_tree"]


def signal_tree(pid: int, sig: signal.Signals, tree: list[psutil.Process]) -> None:
    """Send ``sig`` to the process group led by ``pid``, to ``pid``, and to ``tree``."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)  # the worker made itself a group leader at start
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    for proc in tree:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(sig)  # psutil checks the pid was not reused


def descendants(pid: int) -> list[psutil.Process]:
    """The process tree below ``pid``.

    Reads ``/proc/<pid>/task/*/children``, which costs the size of this tree; psutil's
    generic walk reads every process on the host (tens of ms on a busy one), and this runs
    on the kill path. Falls back to psutil where the kernel lacks that file.
    """
    if not _PROC_CHILDREN:
        with contextlib.suppress(psutil.Error):
            return psutil.Process(pid).children(recursive=True)
        return []
    found: list[psutil.Process] = []
    stack = [pid]
    while stack:
        for child_pid in _children_of(stack.pop()):
            with contextlib.suppress(psutil.Error):
                found.append(psutil.Process(child_pid))
                stack.append(child_pid)
    return found


def _children_of(pid: int) -> list[int]:
    task_dir = f"/proc/{pid}/task"
    pids: list[int] = []
    with contextlib.suppress(OSError):  # the process or one of its threads is gone
        for tid in os.listdir(task_dir):
            with contextlib.suppress(OSError), open(f"{task_dir}/{tid}/children") as f:
                pids += [int(p) for p in f.read().split()]
    return pids


_PROC_CHILDREN = os.path.exists(f"/proc/self/task/{threading.get_native_id()}/children")


_SIGNAL_HINTS = {
    signal.SIGSEGV: "segmentation fault",
    signal.SIGKILL: "out of memory, or killed by another process",
    signal.SIGABRT: "aborted",
    signal.SIGBUS: "bus error",
    signal.SIGFPE: "floating-point exception",
    signal.SIGTERM: "terminated",
}


def describe_exit(exitcode: int) -> str:
    """Words for a multiprocessing exit code (negative means killed by that signal)."""
    if exitcode >= 0:
        return f"exited with code {exitcode}"
    try:
        sig = signal.Signals(-exitcode)
    except ValueError:
        return f"killed by signal {-exitcode}"
    hint = _SIGNAL_HINTS.get(sig)
    return f"killed by {sig.name}" + (f" ({hint})" if hint else "")
