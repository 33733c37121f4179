"""What a task does in its worker process becomes an Outcome; the worker lives on."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from omniq_mp.models import ErrorKind, OutcomeKind
from omniq_mp.pool import ProcessPool
from tests.process import tasks
from tests.process.conftest import MakePool
from tests.process.support import assert_replaced, exists, run_task, value, wait_until

pytestmark = pytest.mark.process


async def _same_worker_runs_next(pid: int, pool: ProcessPool) -> None:
    after = await run_task(pool, tasks.whoami)
    assert value(after) == pid, "the worker was replaced; it should have lived on"
    assert pool.pids() == [pid]


async def test_sync_function_returns_its_value(make_pool: MakePool, start_method: str) -> None:
    pool = await make_pool(1, start_method)
    outcome = await run_task(pool, tasks.add, 2, 3)
    assert outcome.kind is OutcomeKind.SUCCEEDED
    assert outcome.error is None
    assert value(outcome) == 5


async def test_coroutine_function_is_awaited(make_pool: MakePool, start_method: str) -> None:
    pool = await make_pool(1, start_method)
    outcome = await run_task(pool, tasks.async_add, 40, 2)
    assert value(outcome) == 42


async def test_exception_fails_with_its_type_and_traceback(make_pool: MakePool) -> None:
    pool = await make_pool(1)
    outcome = await run_task(pool, tasks.divide_by_zero)
    assert outcome.kind is OutcomeKind.FAILED
    assert outcome.result is None
    assert outcome.error is not None
    assert outcome.error.error_type == "ZeroDivisionError"
    assert outcome.error.kind == ErrorKind.EXCEPTION.value
    assert outcome.error.is_retryable
    assert "divide_by_zero" in outcome.error.traceback
    assert "ZeroDivisionError" in outcome.error.traceback
    assert outcome.pid is not None
    await _same_worker_runs_next(outcome.pid, pool)


@pytest.mark.parametrize(
    ("body", "error_type"),
    [
        (tasks.raise_system_exit, "SystemExit"),
        (tasks.raise_keyboard_interrupt, "KeyboardInterrupt"),
    ],
)
async def test_base_exception_fails_and_the_worker_lives_on(
    make_pool: MakePool, body: Callable[[], None], error_type: str
) -> None:
    pool = await make_pool(1)
    outcome = await run_task(pool, body)
    assert outcome.kind is OutcomeKind.FAILED
    assert outcome.error is not None
    assert outcome.error.error_type == error_type
    assert outcome.error.kind == ErrorKind.EXCEPTION.value
    assert outcome.pid is not None
    await _same_worker_runs_next(outcome.pid, pool)


async def test_unpicklable_result_fails_as_serialization(make_pool: MakePool) -> None:
    pool = await make_pool(1)
    outcome = await run_task(pool, tasks.return_lock)
    assert outcome.kind is OutcomeKind.FAILED
    assert outcome.error is not None
    assert outcome.error.error_type == "SerializationError"
    assert outcome.error.kind == ErrorKind.SERIALIZATION.value
    assert "lock" in outcome.error.message
    assert not outcome.error.is_retryable
    assert outcome.pid is not None
    await _same_worker_runs_next(outcome.pid, pool)


async def test_payload_that_cannot_unpickle_fails_as_serialization(make_pool: MakePool) -> None:
    pool = await make_pool(1)
    outcome = await run_task(pool, tasks.ignore_argument, tasks.UnpicklesBadly())
    assert outcome.kind is OutcomeKind.FAILED
    assert outcome.error is not None
    assert outcome.error.error_type == "SerializationError"
    assert outcome.error.kind == ErrorKind.SERIALIZATION.value
    assert "reconstruction exploded" in outcome.error.message
    assert not outcome.error.is_retryable
    assert not outcome.error.can_retry()
    assert outcome.pid is not None
    await _same_worker_runs_next(outcome.pid, pool)


async def test_dotted_path_to_a_missing_module_fails_as_import(make_pool: MakePool) -> None:
    pool = await make_pool(1)
    outcome = await run_task(pool, "no_such_module.fn")
    assert outcome.kind is OutcomeKind.FAILED
    assert outcome.error is not None
    assert outcome.error.error_type in {"ModuleNotFoundError", "ImportError"}
    assert outcome.error.kind == ErrorKind.IMPORT.value
    assert "no_such_module" in outcome.error.message
    assert not outcome.error.is_retryable
    assert outcome.pid is not None
    await _same_worker_runs_next(outcome.pid, pool)


async def test_dotted_path_to_an_existing_function_runs(make_pool: MakePool) -> None:
    pool = await make_pool(1)
    assert value(await run_task(pool, "tests.process.tasks.add", 1, 1)) == 2


async def test_worker_is_replaced_after_max_tasks_per_child(make_pool: MakePool) -> None:
    pool = await make_pool(1, max_tasks_per_child=2)
    first = value(await run_task(pool, tasks.whoami))
    second = value(await run_task(pool, tasks.whoami))
    assert second == first, "the first worker should serve two tasks"
    await wait_until(lambda: not exists(first), 2.0, f"retired worker {first} exited")
    await assert_replaced(pool, first)  # full again, and the new worker runs a task
    third = value(await run_task(pool, tasks.whoami))
    assert third != first
    assert pool.pids() == [third]


async def test_retiring_workers_last_task_is_not_reported_as_a_crash(make_pool: MakePool) -> None:
    # A retiring worker sends DONE and exits at once. Stall the event loop while that
    # happens, so the pool sees the frame and the exit in the same turn: it must report
    # the task's result, not the exit it may notice first.
    pool = await make_pool(1, max_tasks_per_child=1)
    loop = asyncio.get_running_loop()
    for attempt in range(3):
        loop.call_later(0.05, time.sleep, 0.5)  # the child finishes at 0.2 s, inside the stall
        outcome = await run_task(pool, tasks.sleep_for, 0.2)
        assert outcome.kind is OutcomeKind.SUCCEEDED, f"attempt {attempt}: {outcome.error}"
        assert value(outcome) == 0.2
