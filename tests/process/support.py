"""Helpers for the real-process tests: run one task on a pool, poll for a condition."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import psutil

from omniq_mp.models import Outcome, Task
from omniq_mp.pool import ProcessPool, WorkerProcess
from omniq_mp.serialization import dumps_call, loads_result
from tests.process import tasks

KILL_GRACE = 0.5  # the pools' SIGTERM -> SIGKILL grace
REFILL_WITHIN = 2.0  # a dead worker's replacement must be ready within this
ACQUIRE_WITHIN = 10.0  # never hang on an empty pool until pytest-timeout


def make_task(target: Callable[..., Any] | str, *args: Any, timeout: float = 10.0) -> Task:
    return Task(func_name="t", payload=dumps_call(target, args, {}), timeout=timeout, attempts=1)


async def acquire(pool: ProcessPool) -> WorkerProcess:
    return await asyncio.wait_for(pool.acquire(), ACQUIRE_WITHIN)


async def run_on(
    pool: ProcessPool,
    worker: WorkerProcess,
    target: Callable[..., Any] | str,
    *args: Any,
    timeout: float = 10.0,
) -> Outcome:
    outcome = await pool.run(worker, make_task(target, *args, timeout=timeout))
    assert outcome.pid == worker.pid
    return outcome


async def run_task(
    pool: ProcessPool, target: Callable[..., Any] | str, *args: Any, timeout: float = 10.0
) -> Outcome:
    """Acquire a worker and run one task on it."""
    return await run_on(pool, await acquire(pool), target, *args, timeout=timeout)


def value(outcome: Outcome) -> Any:
    assert outcome.ok, f"expected success, got {outcome.kind}: {outcome.error}"
    assert outcome.result is not None
    return loads_result(outcome.result)


def is_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (exited, not yet reaped) counts as dead."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def exists(pid: int) -> bool:
    """True while ``pid`` is in the process table at all, zombie or not."""
    return psutil.pid_exists(pid)


def describe(pids: list[int]) -> str:
    parts = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            parts.append(f"{pid} ({proc.status()}: {' '.join(proc.cmdline())[:80]})")
        except psutil.NoSuchProcess:
            parts.append(f"{pid} (gone)")
    return ", ".join(parts)


Describe = str | Callable[[], str]


def _failed(within: float, what: Describe) -> AssertionError:
    text = what() if callable(what) else what  # described when it failed, not before
    return AssertionError(f"not true within {within:g}s: {text}")


async def wait_until(condition: Callable[[], bool], within: float, what: Describe) -> None:
    """Poll ``condition`` until it holds; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise _failed(within, what)
        await asyncio.sleep(0.01)


def wait_until_sync(condition: Callable[[], bool], within: float, what: Describe) -> None:
    """Blocking :func:`wait_until`, for tests that drive scripts in subprocesses."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise _failed(within, what)
        time.sleep(0.01)


async def assert_replaced(pool: ProcessPool, dead_pid: int) -> None:
    """The pool is full again, without ``dead_pid``, and every worker (so the replacement
    too) runs a task."""
    await wait_until(
        lambda: pool.idle() == pool.size,
        REFILL_WITHIN,
        lambda: f"pool refilled to {pool.size} idle workers (idle={pool.idle()})",
    )
    await wait_until(lambda: not exists(dead_pid), REFILL_WITHIN, f"pid {dead_pid} reaped")
    workers = [await acquire(pool) for _ in range(pool.size)]
    assert dead_pid not in {w.pid for w in workers}
    assert dead_pid not in pool.pids()
    outcomes = await asyncio.gather(*(run_on(pool, w, tasks.whoami) for w in workers))
    assert [value(o) for o in outcomes] == [w.pid for w in workers]
