"""The Python API as a user calls it, with real worker processes, on SQLite and files."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from omniq_mp import (
    AsyncOmniQ,
    OmniQ,
    SerializationError,
    Settings,
    TaskCancelledError,
    TaskFailedError,
    TaskNotFoundError,
    TaskStatus,
)
from omniq_mp.errors import ConfigError, RemoteTraceback, ResultTimeoutError
from omniq_mp.eventstore import EventType

pytestmark = pytest.mark.e2e


@pytest.fixture(params=["sqlite", "file"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    return Settings(backend=request.param, base_dir=tmp_path / "store", procs=2)


def test_lambdas_closures_and_async_functions_run_on_either_backend(settings: Settings) -> None:
    offset = 1000

    def shifted(x: int) -> int:
        return x + offset

    async def doubled(x: int) -> int:
        await asyncio.sleep(0)
        return 2 * x

    with OmniQ(settings) as q:
        ids = [q.enqueue(lambda x: x * 2, 21), q.enqueue(shifted, 5), q.enqueue(doubled, 4)]
        assert [q.get_result(i, timeout=30) for i in ids] == [42, 1005, 8]
        assert q.stats().completed == 3


def test_config_keyword_and_overrides_are_accepted(tmp_path: Path) -> None:
    with OmniQ(config=Settings(base_dir=tmp_path), procs=1) as q:
        assert q.settings.procs == 1
        assert q.get_result(q.enqueue("math.factorial", args=[5]), timeout=30) == 120
    with pytest.raises(ConfigError, match="not both"):
        OmniQ(Settings(), config=Settings())


def test_remote_failure_carries_type_message_and_traceback(settings: Settings) -> None:
    def explode(name: str) -> None:
        raise KeyError(f"no such user {name}")

    with OmniQ(settings) as q:
        task_id = q.enqueue(explode, "ada", max_retries=0)
        with pytest.raises(TaskFailedError) as info:
            q.get_result(task_id, timeout=30)
    err = info.value
    assert err.error_type == "KeyError" and "no such user ada" in err.message
    assert "in explode" in err.traceback
    assert isinstance(err.__cause__, RemoteTraceback)


def test_unpicklable_argument_raises_at_enqueue_and_stores_nothing(tmp_path: Path) -> None:
    q = OmniQ(Settings(base_dir=tmp_path))
    try:
        with pytest.raises(SerializationError, match=r"argument 0 \(a lock\)"):
            q.enqueue(print, threading.Lock())
        with pytest.raises(SerializationError, match="the callable"):
            lock = threading.Lock()
            q.enqueue(lambda: lock.acquire())
        stats = q.stats()
        assert stats.pending == 0 and stats.unfinished == 0
    finally:
        q.close()


def test_eta_tasks_wait_and_pending_tasks_can_be_cancelled(tmp_path: Path) -> None:
    with OmniQ(Settings(base_dir=tmp_path, procs=1)) as q:
        later = q.enqueue(time.time, eta=timedelta(seconds=0.6))
        never = q.enqueue(time.time, eta=timedelta(hours=1))
        assert q.cancel(never) is True
        task = q.get_task(later)
        assert task is not None
        started = q.get_result(later, timeout=30)
        assert started >= task.eta
        with pytest.raises(TaskCancelledError):
            q.get_result(never, timeout=1)
        assert q.cancel(later) is False  # already finished: a plain no
        with pytest.raises(TaskNotFoundError):
            q.cancel("no-such-task")


def test_get_result_with_no_time_to_wait_answers_from_what_is_stored(tmp_path: Path) -> None:
    # timeout=0 waits for nothing: a finished task's value, an unfinished task's timeout
    # and an unknown id's error all come from one look at the store.
    with OmniQ(Settings(base_dir=tmp_path, procs=1)) as q:
        done = q.enqueue(pow, 2, 8)
        assert q.get_result(done, timeout=30) == 256
        assert q.get_result(done, timeout=0) == 256
        later = q.enqueue(pow, 2, 9, eta=timedelta(hours=1))
        with pytest.raises(ResultTimeoutError, match="it is PENDING"):
            q.get_result(later, timeout=0)
        with pytest.raises(TaskNotFoundError, match="no task with id 'no-such-task'"):
            q.get_result("no-such-task", timeout=0)
        with pytest.raises(TaskNotFoundError, match="no task with id 'no-such-task'"):
            q.get_result("no-such-task", timeout=30)


def test_interval_task_runs_again_and_again(tmp_path: Path) -> None:
    with OmniQ(Settings(base_dir=tmp_path, procs=1)) as q:
        q.enqueue(time.time, interval=timedelta(seconds=0.2))
        deadline = time.monotonic() + 30
        while q.stats().completed < 3:
            assert time.monotonic() < deadline, "interval task did not repeat"
            time.sleep(0.05)
        assert q.stats().pending == 1  # always exactly one next run scheduled


def test_sync_api_works_inside_a_running_event_loop(tmp_path: Path) -> None:
    """What a Jupyter cell does: call the synchronous API while a loop runs."""

    async def cell() -> int:
        with OmniQ(Settings(base_dir=tmp_path, procs=1)) as q:
            result: int = q.get_result(q.enqueue(lambda: 6 * 7), timeout=30)
            return result

    assert asyncio.run(cell()) == 42


async def test_worker_pool_processes_a_limited_number_of_tasks(tmp_path: Path) -> None:
    q = AsyncOmniQ(Settings(base_dir=tmp_path))
    ids = [await q.enqueue(pow, 2, n) for n in range(5)]
    async with q.worker_pool(concurrency=2) as workers:
        assert await workers.process_tasks(limit=3) == 3
    stats = await q.stats()
    assert (stats.completed, stats.pending) == (3, 2)
    async with q.worker_pool(concurrency=1) as workers:
        assert await workers.process_tasks(burst=True) == 2
    assert [await q.get_result(i, timeout=5) for i in ids] == [1, 2, 4, 8, 16]
    task = await q.get_task(ids[0])
    assert task is not None and task.status is TaskStatus.COMPLETED and task.attempts == 1
    await q.close()


async def test_a_worker_pool_of_a_client_not_yet_opened_opens_it(tmp_path: Path) -> None:
    # Tasks stored by another client; this one's first call is worker_pool().
    producer = OmniQ(Settings(base_dir=tmp_path))  # no `with`: that starts a supervisor
    ids = [producer.enqueue(pow, 3, n) for n in range(3)]
    producer.close()
    q = AsyncOmniQ(Settings(base_dir=tmp_path))
    try:
        async with q.worker_pool(concurrency=1) as workers:
            assert await asyncio.wait_for(workers.process_tasks(burst=True), 60) == 3
        assert [await q.get_result(i, timeout=5) for i in ids] == [1, 3, 9]
        kinds = [e.event_type for e in await q.get_events(ids[0])]
        assert EventType.COMPLETED in kinds  # the client's event recorder ran too
    finally:
        await q.close()


def test_purge_takes_status_names_as_the_cli_does(tmp_path: Path) -> None:
    with OmniQ(Settings(base_dir=tmp_path, procs=1)) as q:
        done = q.enqueue(pow, 2, 3)
        failed = q.enqueue("math.sqrt", -1, max_retries=0)
        cancelled = q.enqueue(pow, 2, 4, eta=timedelta(hours=1))
        assert q.get_result(done, timeout=30) == 8
        with pytest.raises(TaskFailedError, match="math domain error"):
            q.get_result(failed, timeout=30)
        assert q.cancel(cancelled)
        time.sleep(0.01)  # purge takes tasks finished more than older_than ago
        with pytest.raises(ConfigError, match=r"statuses takes finished statuses .* 'running'"):
            q.purge(0.005, ["completed", "running"])
        with pytest.raises(ConfigError, match="'complete'"):
            q.purge(0.005, "complete")
        assert q.get_task(done) is not None  # a refused purge deleted nothing
        assert q.purge(0.005, ["Completed", TaskStatus.FAILED]) == 2
        assert q.purge(0.005, "cancelled") == 1
        assert [q.get_task(i) for i in (done, failed, cancelled)] == [None, None, None]


def test_a_cron_schedule_fires_its_task_when_due(tmp_path: Path) -> None:
    import sqlite3

    from omniq_mp.errors import ConfigError as BadInput

    with OmniQ(Settings(base_dir=tmp_path, procs=1)) as q:
        with pytest.raises(BadInput, match="invalid cron"):
            q.enqueue(pow, 2, 10, cron="every minute")
        schedule_id = q.enqueue(pow, 2, 10, cron="*/15 * * * *", tz="Europe/Berlin")
        [listed] = q.periodic()
        assert listed.id == schedule_id and listed.next_run > time.time()
        # Time travel: make the next due time now, as if the clock had reached it.
        with sqlite3.connect(tmp_path / "omniq.db") as db:
            db.execute("UPDATE schedules SET next_run = ?", (time.time() - 1,))
        deadline = time.monotonic() + 30
        while (fired := q.periodic()[0].last_task_id) is None:
            assert time.monotonic() < deadline, "the due schedule did not fire"
            time.sleep(0.05)
        assert q.get_result(fired, timeout=30) == 1024
        assert q.periodic()[0].next_run > time.time()  # moved to the next quarter hour
        assert q.pause(schedule_id).paused
        q.unschedule(schedule_id)
        assert q.periodic() == []


def test_a_repeated_key_with_other_arguments_is_logged(tmp_path: Path) -> None:
    from loguru import logger

    messages: list[str] = []
    logger.enable("omniq_mp")
    sink = logger.add(lambda m: messages.append(str(m)), level="INFO")
    q = OmniQ(Settings(base_dir=tmp_path))
    try:
        first = q.enqueue(pow, 2, 3, key="nightly")
        assert q.enqueue(pow, 2, 3, key="nightly") == first
        assert q.enqueue(pow, 9, 9, key="nightly") == first
    finally:
        q.close()
        logger.remove(sink)
        logger.disable("omniq_mp")
    duplicates = [m for m in messages if "key 'nightly' is held by unfinished task" in m]
    assert len(duplicates) == 2
    assert "arguments differ" not in duplicates[0] and "arguments differ" in duplicates[1]
