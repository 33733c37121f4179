"""The synchronous client stores tasks from the caller's own thread (SQLite): what a user
sees must be the same as through the event loop, from any number of threads."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from omniq_mp import OmniQ, Settings, Task, TaskStatus
from omniq_mp.eventstore import EventType

pytestmark = pytest.mark.e2e


def test_enqueues_from_many_threads_are_all_stored_once_with_their_events(
    tmp_path: Path,
) -> None:
    q = OmniQ(Settings(base_dir=tmp_path))
    q.enqueue(pow, 1, 1)  # opens the store: later calls take the thread path
    ids: list[str] = []
    failures: list[BaseException] = []
    lock = threading.Lock()

    def producer(n: int) -> None:
        try:
            mine = [q.enqueue(pow, n, i) for i in range(150)]
        except BaseException as exc:
            failures.append(exc)
            return
        with lock:
            ids.extend(mine)

    threads = [threading.Thread(target=producer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert failures == []
        assert len(set(ids)) == 600
        assert q.stats().pending == 601
        sample = [q.get_task(i) for i in ids[::25]]
        assert all(t is not None and t.status is TaskStatus.PENDING for t in sample)
        q.close()  # writes every event emitted so far
        q = OmniQ(Settings(base_dir=tmp_path))
        for task_id in ids[::50]:
            assert [e.event_type for e in q.get_events(task_id)] == [EventType.ENQUEUED]
    finally:
        q.close()


def test_thread_enqueued_tasks_run_and_their_events_are_in_order(tmp_path: Path) -> None:
    with OmniQ(Settings(base_dir=tmp_path, procs=2)) as q:
        q.enqueue(pow, 1, 1)
        ids = [q.enqueue(pow, 2, i) for i in range(20)]
        assert [q.get_result(i, timeout=30) for i in ids] == [2**i for i in range(20)]
        q.close()
    q = OmniQ(Settings(base_dir=tmp_path))
    try:
        for task_id in ids:
            kinds = [e.event_type for e in q.get_events(task_id)]
            assert kinds == [EventType.ENQUEUED, EventType.STARTED, EventType.COMPLETED]
    finally:
        q.close()


def test_events_stay_in_lifecycle_order_when_the_enqueuer_is_late_to_emit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The enqueuing thread emits ENQUEUED once its commit returns; a loaded host may
    # deschedule it in between while the supervisor claims, runs and settles the task.
    # Here the commit returns only once the task has completed: the worst such delay.
    with OmniQ(Settings(base_dir=tmp_path, procs=1)) as q:
        q.enqueue(pow, 1, 1)  # opens the store: the next call takes the thread path
        store = q._async.storage
        commit = store.enqueue_blocking

        def commit_then_wait_for_the_outcome(tasks: list[Task]) -> list[str]:
            ids: list[str] = commit(tasks)
            q.get_result(ids[0], timeout=30)
            return ids

        monkeypatch.setattr(store, "enqueue_blocking", commit_then_wait_for_the_outcome)
        task_id = q.enqueue(pow, 2, 5)
        assert q.get_result(task_id, timeout=30) == 32
        kinds = [e.event_type for e in q.get_events(task_id)]
        assert kinds == [EventType.ENQUEUED, EventType.STARTED, EventType.COMPLETED]


def test_a_key_held_by_an_unfinished_task_returns_its_id_through_the_thread_path(
    tmp_path: Path,
) -> None:
    q = OmniQ(Settings(base_dir=tmp_path))
    try:
        first = q.enqueue(pow, 2, 3, key="k")
        assert [q.enqueue(pow, 2, 3, key="k") for _ in range(3)] == [first] * 3
        assert q.stats().pending == 1
    finally:
        q.close()
