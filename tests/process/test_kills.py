"""Timeouts and crashes: the worker (and its tree) is killed or has died, the task gets an
Outcome saying so, and the pool is back to full size."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from omniq_mp.models import ErrorKind, Outcome, OutcomeKind
from omniq_mp.pool import ProcessPool
from tests.process import tasks
from tests.process.conftest import MakePool
from tests.process.support import (
    KILL_GRACE,
    acquire,
    assert_replaced,
    describe,
    is_alive,
    run_on,
    run_task,
    wait_until,
)

pytestmark = pytest.mark.process

TIMEOUT = 0.3


async def assert_tree_gone(pool: ProcessPool, outcome: Outcome, pid_file: Path) -> None:
    """The two grandchildren the task recorded die within 1 s; the worker is replaced."""
    grandchildren = [int(pid) for pid in pid_file.read_text().split()]
    assert len(grandchildren) == 2
    await wait_until(
        lambda: not any(is_alive(pid) for pid in grandchildren),
        1.0,
        lambda: f"grandchildren killed: {describe(grandchildren)}",
    )
    assert outcome.pid is not None
    await assert_replaced(pool, outcome.pid)


@pytest.mark.parametrize(
    ("body", "args"),
    [(tasks.sleep_for, (60,)), (tasks.busy_loop, ())],
    ids=["sleep", "busy-loop"],
)
async def test_timeout_kills_the_worker(
    make_pool: MakePool, start_method: str, body: Callable[..., object], args: tuple[object, ...]
) -> None:
    pool = await make_pool(2, start_method)
    worker = await acquire(pool)
    proc = psutil.Process(worker.pid)
    begin = time.monotonic()
    outcome = await run_on(pool, worker, body, *args, timeout=TIMEOUT)
    elapsed = time.monotonic() - begin

    assert outcome.kind is OutcomeKind.TIMED_OUT
    assert outcome.error is not None
    assert outcome.error.error_type == "TimeoutError"
    assert outcome.error.kind == ErrorKind.TIMEOUT.value
    assert "0.3s timeout" in outcome.error.message
    assert not is_alive(worker.pid), "the timed-out worker still runs after run() returned"
    # SIGTERM was enough: no escalation to SIGKILL after the grace.
    assert "(SIGTERM)" in outcome.error.message
    assert elapsed >= TIMEOUT
    await wait_until(lambda: not proc.is_running(), 2.0, f"worker {worker.pid} reaped")
    await assert_replaced(pool, worker.pid)


async def test_timeout_escalates_to_sigkill_when_sigterm_is_ignored(
    make_pool: MakePool, start_method: str
) -> None:
    pool = await make_pool(2, start_method)
    worker = await acquire(pool)
    begin = time.monotonic()
    outcome = await run_on(pool, worker, tasks.ignore_sigterm_and_loop, timeout=TIMEOUT)
    elapsed = time.monotonic() - begin

    assert outcome.kind is OutcomeKind.TIMED_OUT
    assert not is_alive(worker.pid)
    # It outlived SIGTERM for the whole grace, then SIGKILL ended it.
    assert outcome.error is not None and "(SIGKILL)" in outcome.error.message
    assert elapsed >= TIMEOUT + KILL_GRACE, elapsed
    await assert_replaced(pool, worker.pid)


@pytest.mark.parametrize(
    ("body", "args", "text"),
    [
        (tasks.hard_exit, (7,), "exited with code 7"),
        (tasks.hard_exit, (0,), "exited with code 0"),  # no result: a crash, never success
        (tasks.segfault, (), "SIGSEGV"),
    ],
    ids=["exit-7", "exit-0", "segfault"],
)
async def test_crash_is_reported_with_how_the_process_ended(
    make_pool: MakePool,
    start_method: str,
    body: Callable[..., object],
    args: tuple[object, ...],
    text: str,
) -> None:
    pool = await make_pool(2, start_method)
    outcome = await run_task(pool, body, *args)

    assert outcome.kind is OutcomeKind.CRASHED
    assert not outcome.ok
    assert outcome.result is None
    assert outcome.error is not None
    assert outcome.error.error_type == "WorkerCrashed"
    assert outcome.error.kind == ErrorKind.CRASH.value
    assert text in outcome.error.message
    assert outcome.pid is not None
    assert not is_alive(outcome.pid)
    await assert_replaced(pool, outcome.pid)


async def test_timeout_kills_the_tasks_grandchildren(
    make_pool: MakePool, start_method: str, tmp_path: Path
) -> None:
    pid_file = tmp_path / "grandchildren"
    pool = await make_pool(1, start_method)
    outcome = await run_task(pool, tasks.grandchildren_then_sleep, str(pid_file), 60, timeout=1.0)

    assert outcome.kind is OutcomeKind.TIMED_OUT
    assert pid_file.exists(), "the task did not get to start its grandchildren"
    await assert_tree_gone(pool, outcome, pid_file)


async def test_crash_kills_the_tasks_grandchildren(
    make_pool: MakePool, start_method: str, tmp_path: Path
) -> None:
    pid_file = tmp_path / "grandchildren"
    pool = await make_pool(1, start_method)
    outcome = await run_task(pool, tasks.grandchildren_then_exit, str(pid_file))

    assert outcome.kind is OutcomeKind.CRASHED
    assert outcome.error is not None
    assert "exited with code 5" in outcome.error.message
    # Orphaned by the crash, but still in the dead worker's process group: killed with it.
    await assert_tree_gone(pool, outcome, pid_file)


async def test_close_while_a_replacement_starts_leaves_no_worker_running(
    make_pool: MakePool,
) -> None:
    # spawn: a replacement takes a while to import, so close() lands while it starts.
    pool = await make_pool(1, "spawn", max_tasks_per_child=1)
    retired = (await run_task(pool, tasks.whoami)).pid
    await wait_until(
        lambda: any(pid != retired for pid in pool.pids()), 2.0, "a replacement is starting"
    )
    starting = [pid for pid in pool.pids() if pid != retired]
    await pool.close()
    # close() promises that every worker has exited when it returns.
    assert not any(is_alive(pid) for pid in starting), describe(starting)
