"""Futures, executors, map and the task decorator, with real worker processes: what a
notebook user relies on."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

from omniq_mp import (
    AsyncOmniQ,
    OmniQ,
    OmniQExecutor,
    SerializationError,
    Settings,
    TaskFailedError,
    TaskNotFoundError,
    TaskStatus,
)
from tests.process import decorated
from tests.process.support import exists, wait_until_sync
from tests.waiting import until

pytestmark = pytest.mark.process

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(base_dir=tmp_path / "store", procs=2, kill_grace=0.2)


@pytest.fixture
def q(settings: Settings) -> Iterator[OmniQ]:
    with OmniQ(settings) as client:
        yield client


def test_as_completed_over_500_futures_gives_every_value_once(q: OmniQ) -> None:
    futures = {q.submit(lambda x: x * x, i): i for i in range(500)}
    seen = {futures[f]: f.result() for f in cf.as_completed(futures, timeout=60)}
    assert seen == {i: i * i for i in range(500)}
    assert all(f.done() and not f.cancelled() for f in futures)


def test_wait_and_exceptions_follow_concurrent_futures(q: OmniQ) -> None:
    ok = q.submit(lambda: "fine")
    bad = q.submit(lambda: 1 / 0, max_retries=0)
    done, not_done = cf.wait([ok, bad], timeout=30, return_when=cf.ALL_COMPLETED)
    assert done == {ok, bad} and not not_done
    error = bad.exception()
    assert isinstance(error, TaskFailedError) and error.error_type == "ZeroDivisionError"
    with pytest.raises(TaskFailedError, match="division by zero"):
        bad.result()


def test_result_timeout_raises_without_cancelling_the_task(q: OmniQ) -> None:
    future = q.submit(time.sleep, 1.0)
    with pytest.raises(TimeoutError):
        future.result(timeout=0.1)
    assert not future.cancelled()
    assert future.result(timeout=30) is None
    assert q.get_task(future.task_id).status is TaskStatus.COMPLETED  # type: ignore[union-attr]


def test_cancel_of_a_running_future_kills_its_process(q: OmniQ, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"

    def write_pid_and_sleep(path: str) -> None:
        Path(path).write_text(str(os.getpid()))
        time.sleep(60)

    future = q.submit(write_pid_and_sleep, str(pid_file))
    wait_until_sync(pid_file.exists, 30, "the task to start")
    pid = int(pid_file.read_text())
    assert future.cancel() is True
    assert future.cancelled() and future.done()
    with pytest.raises(cf.CancelledError):
        future.result()
    wait_until_sync(lambda: not exists(pid), 10, f"the task's process {pid} to be killed")
    wait_until_sync(
        lambda: q.get_task(future.task_id).status is TaskStatus.CANCELLED,  # type: ignore[union-attr]
        10,
        "the task to be stored CANCELLED",
    )
    assert q.submit(lambda: "still serving").result(timeout=30) == "still serving"


def test_cancel_of_a_finished_future_returns_false(q: OmniQ) -> None:
    future = q.submit(lambda: 7)
    assert future.result(timeout=30) == 7
    assert future.cancel() is False and future.result() == 7


def test_future_reattached_by_id_after_the_submitting_process_is_gone(
    settings: Settings,
) -> None:
    # A "kernel" submits with no worker running and exits; a new session re-attaches.
    script = textwrap.dedent(
        f"""
        from omniq_mp import OmniQ
        q = OmniQ(base_dir={str(settings.base_dir)!r})
        print(q.submit(lambda: sum(range(10))).task_id)
        q.close()
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    task_id = done.stdout.strip()
    with OmniQ(settings) as q:
        assert q.future(task_id).result(timeout=30) == 45
        with pytest.raises(TaskNotFoundError):
            q.future("no-such-task")


def test_map_keeps_order_with_and_without_chunks(q: OmniQ) -> None:
    assert q.map(lambda a, b: a * b, range(300), range(300)) == [i * i for i in range(300)]
    assert q.map(lambda x: -x, range(1000), chunksize=64) == [-i for i in range(1000)]
    tasks = q.stats().total
    assert q.map(abs, [], chunksize=8) == []
    assert q.stats().total == tasks


def test_map_over_a_generator_that_raises_cancels_what_it_stored(settings: Settings) -> None:
    def items() -> Iterator[int]:
        yield from range(1200)  # two batches of 500 are stored before the failure
        raise RuntimeError("source broke")

    q = OmniQ(settings)  # a producer: nothing runs, so every stored task is still pending
    try:
        with pytest.raises(RuntimeError, match="source broke"):
            q.map(lambda x: x, items())
        stats = q.stats()
        assert stats.total == 1000 and stats.cancelled == 1000
    finally:
        q.close()


def test_map_timeout_raises_timeout_error_and_cancels_the_rest(q: OmniQ) -> None:
    with pytest.raises(TimeoutError):
        q.map(time.sleep, [30, 30, 30], timeout=0.5)
    wait_until_sync(lambda: q.stats().cancelled == 3, 15, "the three tasks to be cancelled")


def test_map_with_progress_draws_done_and_failed(
    q: OmniQ, capsys: pytest.CaptureFixture[str]
) -> None:
    assert q.map(lambda x: x + 1, range(40), progress=True) == list(range(1, 41))
    err = capsys.readouterr().err
    assert "40/40" in err and "100%" in err
    executor = q.executor(max_retries=0)
    results = executor.map(lambda x: 1 / x, [1, 0, 2], progress=True)
    assert next(results) == 1.0
    with pytest.raises(TaskFailedError):
        next(results)
    assert "failed=1" in capsys.readouterr().err
    # A chunk of calls is one task but counts as its calls: 30 over 4 tasks of up to 8.
    assert q.map(lambda x: x, range(30), chunksize=8, progress=True) == list(range(30))
    assert "30/30" in capsys.readouterr().err


def test_executor_is_a_concurrent_futures_executor(settings: Settings) -> None:
    with OmniQExecutor(procs=2, base_dir=settings.base_dir, timeout=0.5, max_retries=0) as executor:
        assert isinstance(executor, cf.Executor)
        # submit's keyword arguments all reach the function, reserved-looking ones too
        assert executor.submit(lambda timeout: timeout * 2, timeout=21).result(30) == 42
        assert list(executor.map(pow, [2, 3], [5, 2])) == [32, 9]
        overrun = executor.submit(time.sleep, 30)
        with pytest.raises(TaskFailedError, match="TimeoutError"):
            overrun.result(timeout=60)
        slow = executor.submit(time.sleep, 30)
    assert slow.cancelled() is False and slow.done()  # shutdown(wait=True) waited for it
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(abs, 1)


def test_shutdown_with_cancel_futures_cancels_what_is_left(settings: Settings) -> None:
    executor = OmniQExecutor(procs=1, base_dir=settings.base_dir)
    futures = [executor.submit(time.sleep, 30) for _ in range(3)]
    executor.shutdown(wait=True, cancel_futures=True)
    assert all(f.cancelled() for f in futures)


def test_wrap_future_and_the_sync_api_inside_a_running_loop(q: OmniQ) -> None:
    # Jupyter runs cells inside a running event loop: the sync API must still work there.
    async def cell() -> tuple[int, list[int]]:
        value = await asyncio.wrap_future(q.submit(pow, 2, 10))
        return value, q.map(lambda x: x * 3, range(5))

    assert asyncio.run(cell()) == (1024, [0, 3, 6, 9, 12])


def test_submit_of_something_unpicklable_fails_at_once_naming_the_type(q: OmniQ) -> None:
    lock = threading.Lock()
    with pytest.raises(SerializationError, match="lock"):
        q.submit(lambda: lock)
    with pytest.raises(SerializationError, match="argument 0"):
        q.executor().submit(id, threading.Lock())


async def test_async_map_takes_chunksize_and_timeout_as_the_sync_one(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    async with AsyncOmniQ(settings) as q:
        negated = await q.map(lambda x: -x, range(100), chunksize=16, progress=True)
        assert negated == [-i for i in range(100)]
        assert "100/100" in capsys.readouterr().err  # chunks count as their calls
        assert await q.map(abs, [], chunksize=8) == []
        with pytest.raises(ValueError, match="chunksize must be an int >= 1"):
            await q.map(abs, [1], chunksize=0)
        with pytest.raises(TimeoutError):  # the whole map's time, not a per-task kill
            await q.map(time.sleep, [30, 30], timeout=0.5)

        async def both_cancelled() -> bool:
            return (await q.stats()).cancelled == 2

        await until(both_cancelled, 15, "the two unfinished tasks to be cancelled")


async def test_async_submit_returns_awaitable_handles(settings: Settings) -> None:
    async with AsyncOmniQ(settings) as q:
        handle = q.submit(lambda x: x + 1, 41)  # the id is known before it is stored
        assert await handle == 42
        assert (await q.get_task(handle.task_id)) is not None
        assert await q.future(handle.task_id) == 42
        assert await q.map(lambda x: x * 2, range(50)) == [x * 2 for x in range(50)]
        slow = q.submit(time.sleep, 30)
        with pytest.raises(asyncio.TimeoutError):
            await slow.result(timeout=0.1)
        assert await slow.cancel() is True
        with pytest.raises(TaskNotFoundError):
            await q.future("nope")
        lock = threading.Lock()
        with pytest.raises(SerializationError, match="lock"):
            q.submit(lambda: lock)


def test_task_decorator_by_reference_and_by_value(q: OmniQ) -> None:
    previous = decorated.square.client
    decorated.square.client = q
    try:
        assert decorated.square(4) == 16  # a direct call still runs here
        task_id = decorated.square.enqueue(5)
        assert q.get_result(task_id, timeout=30) == 25
        task = q.get_task(task_id)
        assert task is not None and task.func_name == "tests.process.decorated:square"
        assert task.max_retries == 0 and task.timeout == 10
        assert decorated.square.submit(6).result(timeout=30) == 36
        assert decorated.square.map([1, 2, 3]) == [1, 4, 9]
    finally:
        decorated.square.client = previous

    @q.task(max_retries=1)
    def shout(text: str, times: int = 1) -> str:
        return text.upper() * times

    assert shout("a") == "A"
    assert shout.submit("hi", times=2).result(timeout=30) == "HIHI"
    assert shout.options(max_retries=0).task_options == {"max_retries": 0}


def test_a_task_pickled_by_another_python_fails_naming_both_versions(q: OmniQ) -> None:
    import platform

    from omniq_mp.envelope import Header, seal, split

    task = q.build(lambda: "bytecode from elsewhere")
    header, body = split(task.payload)
    assert header is not None and header.code is not None
    task.payload = seal(Header("3.99.0", header.cloudpickle, header.code), bytes(body))
    [task_id] = q.enqueue_tasks([task])
    with pytest.raises(TaskFailedError) as caught:
        q.get_result(task_id, timeout=30)
    assert caught.value.error_type == "VersionSkewError"
    assert "Python 3.99.0" in caught.value.message
    assert f"Python {platform.python_version()}" in caught.value.message
    stored = q.get_task(task_id)
    assert stored is not None and stored.attempts == 1  # not retried: it cannot succeed


def test_enqueue_many_stores_every_call_with_shared_options(settings: Settings) -> None:
    q = OmniQ(settings)  # a producer: nothing runs
    try:
        ids = q.enqueue_many(pow, [(2, n) for n in range(2500)], queue="bulk", max_retries=1)
        assert len(set(ids)) == 2500
        tasks = [q.get_task(i) for i in (ids[0], ids[1234], ids[-1])]
        assert all(t is not None and t.queue == "bulk" and t.max_retries == 1 for t in tasks)
        assert q.stats(["bulk"]).pending == 2500
        with pytest.raises(SerializationError):
            q.enqueue_many(pow, [(threading.Lock(), 1)])
        assert q.stats(["bulk"]).pending == 2500  # the failed batch stored nothing
    finally:
        q.close()


def test_a_big_batch_logs_one_enqueue_line_and_a_small_one_a_line_per_task(
    settings: Settings,
) -> None:
    # A debug line per task cost a tenth of storing it in a batch; a user tracing one task
    # still finds its own line when it was enqueued alone or in a small batch.
    actions: list[tuple[str, str | None]] = []

    def note(message: Any) -> None:
        extra = message.record["extra"]
        actions.append((extra.get("action"), extra.get("task_id")))

    logger.enable("omniq_mp")
    sink = logger.add(
        note,
        level="DEBUG",
        filter=lambda r: r["extra"].get("action") in ("task_enqueued", "tasks_enqueued"),
    )
    q = OmniQ(settings)
    try:
        small = q.enqueue_many(pow, [(2, n) for n in range(3)])
        assert actions == [("task_enqueued", task_id) for task_id in small]
        actions.clear()
        big = q.enqueue_many(pow, [(2, n) for n in range(150)])
        assert actions == [("tasks_enqueued", None)] and len(big) == 150
    finally:
        q.close()
        logger.remove(sink)
