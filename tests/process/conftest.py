"""Fixtures for tests that start real worker processes.

Every test here is checked for stray processes: whatever it started (workers,
grandchildren, helper scripts and their children) must be gone when it ends. While a test
runs, the test process is a child subreaper (Linux), so an orphaned grandchild is
re-parented to us instead of init and the check sees it too.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from multiprocessing import forkserver, resource_tracker
from typing import Any

import psutil
import pytest

from omniq_mp.pool import ProcessPool
from tests.process.support import KILL_GRACE

_PR_SET_CHILD_SUBREAPER = 36
_STRAY_WAIT = 3.0
_HELPER_NAMES = ("forkserver", "resource_tracker")
_UNKNOWN = object()

MakePool = Callable[..., Awaitable[ProcessPool]]


@pytest.fixture(params=["forkserver", "spawn"])
def start_method(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def make_pool() -> AsyncIterator[MakePool]:
    """``await make_pool(size, start_method, **options)``: a started pool, closed after."""
    pools: list[ProcessPool] = []

    async def make(size: int = 2, start_method: str = "forkserver", **options: Any) -> ProcessPool:
        options.setdefault("kill_grace", KILL_GRACE)
        pool = ProcessPool(size, start_method=start_method, **options)
        pools.append(pool)  # closed even if start() fails half-way
        await pool.start()
        return pool

    yield make
    for pool in pools:
        await pool.close()


# -- stray processes -----------------------------------------------------------------------


def _set_subreaper(on: bool) -> None:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0)


def _our_helpers() -> tuple[set[int], bool]:
    """Pids of this process's own multiprocessing fork server and resource tracker, and
    whether multiprocessing exposed them (else helpers are recognized by command line)."""
    known = (
        getattr(forkserver._forkserver, "_forkserver_pid", _UNKNOWN),
        getattr(resource_tracker._resource_tracker, "_pid", _UNKNOWN),
    )
    exposed = all(pid is not _UNKNOWN for pid in known)
    return {pid for pid in known if isinstance(pid, int)}, exposed


def _is_helper(proc: psutil.Process) -> bool:
    pids, exposed = _our_helpers()
    if exposed:
        # Exact: a helper of a killed script, re-parented to us, is a stray like the rest.
        return proc.pid in pids
    with contextlib.suppress(psutil.Error):
        cmdline = " ".join(proc.cmdline())
        return proc.ppid() == os.getpid() and any(n in cmdline for n in _HELPER_NAMES)
    return False


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _reap_zombies() -> None:
    """Reap exited children nobody else waits for (orphans re-parented to us)."""
    multiprocessing.active_children()  # reaps the children multiprocessing knows, its way
    helpers, _ = _our_helpers()  # multiprocessing waits for these itself
    for proc in psutil.Process().children():
        with contextlib.suppress(psutil.Error, ChildProcessError):
            if proc.pid not in helpers and proc.status() == psutil.STATUS_ZOMBIE:
                os.waitpid(proc.pid, os.WNOHANG)


def _strays(before: set[int]) -> list[psutil.Process]:
    found = []
    for proc in psutil.Process().children(recursive=True):
        if proc.pid in before or not _running(proc) or _is_helper(proc):
            continue
        found.append(proc)
    return found


def _describe(procs: list[psutil.Process]) -> str:
    lines = []
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            lines.append(f"  pid {proc.pid} ppid {proc.ppid()}: {' '.join(proc.cmdline())[:120]}")
    return "\n".join(lines)


@pytest.fixture(autouse=True)
def no_stray_processes() -> Iterator[None]:
    """Fail the test if a process it started is still running 3 s after it ends."""
    _set_subreaper(True)
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    try:
        yield
        deadline = time.monotonic() + _STRAY_WAIT
        while True:
            _reap_zombies()
            strays = _strays(before)
            if not strays or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        if strays:
            report = _describe(strays)
            for proc in strays:
                with contextlib.suppress(psutil.Error):
                    proc.send_signal(signal.SIGKILL)
            psutil.wait_procs(strays, timeout=2.0)
            _reap_zombies()
            pytest.fail(f"the test left {len(strays)} process(es) running:\n{report}")
    finally:
        _reap_zombies()
        _set_subreaper(False)
