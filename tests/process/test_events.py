"""Event sequences of real task lifecycles, asserted exactly (huey's ordering: error, then
retrying, then scheduled, then started again)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest

from omniq_mp import AsyncOmniQ, OmniQ, Settings
from omniq_mp.errors import OmniqError
from omniq_mp.events import AsyncEventProcessor, Event, EventType
from tests.process import tasks
from tests.waiting import wait_for

pytestmark = pytest.mark.process

E = EventType


def types_of(q: OmniQ, task_id: str) -> list[str]:
    return [e.event_type.value for e in q.get_events(task_id)]


def settings(tmp_path: Path) -> Settings:
    return Settings(base_dir=tmp_path, procs=2, retry_delay=0.05, kill_grace=0.2)


def finish(q: OmniQ, task_id: str) -> None:
    try:
        q.get_result(task_id, timeout=60)
    except OmniqError:
        pass


def test_event_sequences_of_each_lifecycle(tmp_path: Path) -> None:
    with OmniQ(settings(tmp_path)) as q:
        ok = q.enqueue(tasks.add, 1, 2)
        flaky = q.enqueue(tasks.divide_by_zero, max_retries=1)
        later = q.enqueue(tasks.add, 2, 2, eta=timedelta(seconds=0.3))
        slow = q.enqueue(tasks.sleep_for, 30, timeout=0.3, max_retries=0)
        crash = q.enqueue(tasks.segfault)
        for task_id in (ok, flaky, later, slow, crash):
            finish(q, task_id)
        waiting = q.enqueue(tasks.add, 0, 0, eta=timedelta(hours=1))
        q.cancel(waiting)
        sequences = {t: types_of(q, t) for t in (ok, flaky, later, slow, crash, waiting)}
    run = ["STARTED"]
    assert sequences[ok] == ["ENQUEUED", *run, "COMPLETED"]
    assert sequences[flaky] == (
        ["ENQUEUED", *run, "FAILED", "RETRIED", "SCHEDULED", *run, "FAILED"]
    )
    assert sequences[later] == ["ENQUEUED", "SCHEDULED", *run, "COMPLETED"]
    assert sequences[slow] == ["ENQUEUED", *run, "TIMED_OUT"]
    crashed_once = [*run, "FAILED", "RETRIED", "SCHEDULED"]
    assert sequences[crash] == ["ENQUEUED", *crashed_once, *crashed_once, *run, "DEAD"]
    assert sequences[waiting] == ["ENQUEUED", "SCHEDULED"]  # cancelled before it ever ran


def test_event_fields_carry_task_and_worker_details(tmp_path: Path) -> None:
    with OmniQ(settings(tmp_path)) as q:
        task_id = q.enqueue(tasks.divide_by_zero, max_retries=0)
        finish(q, task_id)
        events = q.get_events(task_id)
    enqueued, started, failed = events
    assert enqueued.func_name == "tests.process.tasks.divide_by_zero"
    assert enqueued.queue == "default" and enqueued.worker_id is None
    assert started.worker_id is not None and started.attempt == 1 and started.details["pid"] > 0
    assert failed.details == {"error": "ZeroDivisionError: division by zero", "will_retry": False}
    assert failed.duration is not None and failed.duration > 0
    assert enqueued.timestamp <= started.timestamp <= failed.timestamp


def test_worker_events_report_online_heartbeat_and_offline(tmp_path: Path) -> None:
    with OmniQ(settings(tmp_path)) as q:
        q.get_result(q.enqueue(tasks.add, 1, 1), timeout=30)
    reader = OmniQ(Settings(base_dir=tmp_path))
    try:
        worker_events = [e for e in _all_events(reader) if e.event_type.is_worker_event]
    finally:
        reader.close()
    kinds = [e.event_type for e in worker_events]
    assert kinds[0] is E.WORKER_ONLINE and kinds[-1] is E.WORKER_OFFLINE
    assert E.WORKER_HEARTBEAT in kinds
    assert worker_events[-1].details["processed"] == 1
    assert worker_events[0].details["procs"] == 2


def _all_events(q: OmniQ) -> list[Event]:
    async def collect() -> list[Event]:
        return [s.event async for s in q._async.events()]

    return q._loop.call(collect())


async def test_a_restarted_processor_resumes_with_no_gap_and_no_repeat(tmp_path: Path) -> None:
    q = AsyncOmniQ(settings(tmp_path))
    await q.enqueue_tasks([q.build(pow, 2, n) for n in range(200)])
    events_db = str(tmp_path / "events.db")
    seen: list[Event] = []

    first = AsyncEventProcessor(event_storage_type="sqlite", event_storage_path=events_db)
    first.register_handler(seen.append)
    following = asyncio.create_task(first.start())  # live, while the tasks run
    async with q.worker_pool() as workers:
        await workers.process_tasks(limit=100)
        await asyncio.to_thread(wait_for, lambda: len(seen) >= 150, 30, "150 events")
        first.stop()
        await following  # the "crash" of the follower, with its position saved
        await workers.process_tasks(limit=100)
    await q.close()  # flush every event

    second = AsyncEventProcessor(
        event_storage_type="sqlite", event_storage_path=events_db, after=first.position
    )
    second.register_handler(seen.append)
    stored = [s.event async for s in _read_all(events_db)]
    resumed = asyncio.create_task(second.start())
    await asyncio.to_thread(wait_for, lambda: len(seen) >= len(stored), 30, "every event")
    second.stop()
    await resumed
    assert seen == stored  # every event exactly once, in order, across the restart
    assert sum(e.event_type is E.COMPLETED for e in seen) == 200


async def _read_all(path: str):  # type: ignore[no-untyped-def]
    from omniq_mp.events import follow
    from omniq_mp.eventstore import SQLiteEventStorage

    storage = SQLiteEventStorage(path)
    await storage.open()
    try:
        async for stored in follow(storage, 0, live=False):
            yield stored
    finally:
        await storage.close()


def test_cancelling_a_running_task_records_cancelled(tmp_path: Path) -> None:
    from omniq_mp import TaskCancelledError, TaskStatus

    with OmniQ(settings(tmp_path)) as q:
        task_id = q.enqueue(tasks.sleep_for, 30, max_retries=3)
        wait_for(lambda: q.get_task(task_id).status is TaskStatus.RUNNING, 30, "start")  # type: ignore[union-attr]
        wait_for(lambda: "STARTED" in types_of(q, task_id), 30, "the STARTED event")
        assert q.cancel(task_id)
        with pytest.raises(TaskCancelledError):
            q.get_result(task_id, timeout=30)
        assert types_of(q, task_id) == ["ENQUEUED", "STARTED", "CANCELLED"]


def test_old_events_are_purged_after_event_ttl(tmp_path: Path) -> None:
    short = Settings(base_dir=tmp_path, procs=1, event_ttl=0.3, purge_interval=0.2)
    with OmniQ(short) as q:
        task_id = q.enqueue(tasks.add, 1, 1)
        q.get_result(task_id, timeout=30)
        assert types_of(q, task_id) == ["ENQUEUED", "STARTED", "COMPLETED"]
        wait_for(lambda: types_of(q, task_id) == [], 10, "the task's events to expire")


@pytest.mark.parametrize("kind", ["file", "memory"])
def test_events_work_with_every_event_store(tmp_path: Path, kind: str) -> None:
    chosen = Settings(base_dir=tmp_path, procs=1, event_storage_type=kind)
    with OmniQ(chosen) as q:
        task_id = q.enqueue(tasks.add, 2, 2)
        assert q.get_result(task_id, timeout=30) == 4
        assert types_of(q, task_id) == ["ENQUEUED", "STARTED", "COMPLETED"]
    if kind == "file":
        assert any((tmp_path / "events").glob("events-*.jsonl"))
