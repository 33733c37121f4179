"""Enqueue calls that wait on one SQLite store's commit share the next one (group commit),
and each call keeps its own all-or-nothing outcome."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from omniq_mp.models import Task, create_task
from omniq_mp.storage import sqlite as sqlite_store
from omniq_mp.storage.sqlite import SQLiteStorage
from tests.waiting import until, wait_for

NOW = 1_700_000_000.0


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStorage]:
    storage = SQLiteStorage(tmp_path / "omniq.db")
    await storage.open()
    try:
        yield storage
    finally:
        await storage.close()


@pytest.fixture
def commits(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts the transactions the store commits (one entry each)."""
    counted: list[int] = []
    real = sqlite_store._commit

    def counting(conn: sqlite3.Connection, body: Callable[[sqlite3.Connection], Any]) -> Any:
        result = real(conn, body)
        counted.append(1)
        return result

    monkeypatch.setattr(sqlite_store, "_commit", counting)
    yield counted


async def in_flight(store: SQLiteStorage) -> bool:
    """A group has been taken for commit and no call waits for the next one yet."""
    groups = store._loop_groups
    return groups._committer is not None and not groups._waiting


async def while_busy(store: SQLiteStorage, *calls: list[Task]) -> list[Any]:
    """Make every call while a commit is under way (held in the store's thread, as when
    it is being synced), then let it end; each call's ids, or the exception it raised."""
    release = threading.Event()
    holder = asyncio.ensure_future(store._open_thread().run(lambda conn: release.wait(10)))
    first = asyncio.ensure_future(store.enqueue([create_task("m.f", eta=NOW)]))
    await until(lambda: in_flight(store), 5, "the first call's commit to start")
    waiting = [asyncio.ensure_future(store.enqueue(tasks)) for tasks in calls]
    await until(lambda: has_waiting(store, len(calls)), 5, "every call to wait")
    release.set()
    await holder
    await first
    return await asyncio.gather(*waiting, return_exceptions=True)


async def has_waiting(store: SQLiteStorage, count: int) -> bool:
    return len(store._loop_groups._waiting) == count


async def test_calls_waiting_on_a_commit_share_the_next_one(
    store: SQLiteStorage, commits: list[int]
) -> None:
    calls = [[create_task("m.f", eta=NOW) for _ in range(3)] for _ in range(20)]
    outcomes = await while_busy(store, *calls)
    assert outcomes == [[t.id for t in tasks] for tasks in calls]
    assert len(commits) == 2  # the call in flight, then the twenty waiting ones together
    assert (await store.stats(None, NOW)).pending == 1 + 60


async def test_a_duplicate_id_fails_its_own_call_only(store: SQLiteStorage) -> None:
    existing = create_task("m.f", eta=NOW)
    await store.enqueue([existing])
    before = [create_task("m.f", eta=NOW)]
    refused = [create_task("m.f", eta=NOW), existing]
    after = [create_task("m.f", eta=NOW)]
    outcomes = await while_busy(store, before, refused, after)
    assert outcomes[0] == [before[0].id]
    assert isinstance(outcomes[1], ValueError)
    assert "already exists" in str(outcomes[1])
    assert outcomes[2] == [after[0].id]
    assert await store.get(refused[0].id) is None  # the refused call stored nothing
    assert await store.get(before[0].id) is not None
    assert await store.get(after[0].id) is not None


async def test_a_key_taken_by_an_earlier_call_of_the_group_is_deduplicated(
    store: SQLiteStorage,
) -> None:
    first = create_task("m.f", eta=NOW, key="nightly")
    second = create_task("m.f", eta=NOW, key="nightly")
    outcomes = await while_busy(store, [first], [second])
    assert outcomes == [[first.id], [first.id]]
    assert await store.get(second.id) is None


async def test_a_group_keeps_the_order_the_calls_were_made_in(store: SQLiteStorage) -> None:
    calls = [[create_task("m.f", eta=NOW) for _ in range(2)] for _ in range(5)]
    await while_busy(store, *calls)
    claimed = await store.claim(["default"], 100, NOW + 1, NOW + 60, "w")
    assert [t.id for t in claimed][1:] == [t.id for tasks in calls for t in tasks]


async def test_a_call_cancelled_before_its_turn_stores_nothing(store: SQLiteStorage) -> None:
    release = threading.Event()
    holder = asyncio.ensure_future(store._open_thread().run(lambda conn: release.wait(10)))
    kept, dropped = create_task("m.f", eta=NOW), create_task("m.f", eta=NOW)
    first = asyncio.ensure_future(store.enqueue([kept]))
    await until(lambda: in_flight(store), 5, "the first call's commit to start")
    cancelled = asyncio.ensure_future(store.enqueue([dropped]))
    await until(lambda: has_waiting(store, 1), 5, "the second call to wait")
    cancelled.cancel()
    release.set()
    await holder
    assert await first == [kept.id]
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    assert await store.get(dropped.id) is None
    assert await store.get(kept.id) is not None


async def test_close_stores_the_calls_still_waiting(tmp_path: Path) -> None:
    store = SQLiteStorage(tmp_path / "omniq.db")
    await store.open()
    calls = [[create_task("m.f", eta=NOW)] for _ in range(10)]
    waiting = [asyncio.ensure_future(store.enqueue(tasks)) for tasks in calls]
    await asyncio.sleep(0)
    await store.close()
    assert [await w for w in waiting] == [[tasks[0].id] for tasks in calls]
    reopened = SQLiteStorage(tmp_path / "omniq.db")
    await reopened.open()
    try:
        assert (await reopened.stats(None, NOW)).pending == 10
    finally:
        await reopened.close()


def test_threads_waiting_on_a_commit_share_the_next_one(
    store: SQLiteStorage, commits: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The synchronous client's path: each thread commits on a connection of its own.
    release = threading.Event()
    counting = sqlite_store._commit

    def first_one_held(conn: sqlite3.Connection, body: Callable[..., Any]) -> Any:
        if not commits:
            release.wait(10)
        return counting(conn, body)

    monkeypatch.setattr(sqlite_store, "_commit", first_one_held)
    existing = create_task("m.f", eta=NOW)
    calls = [[create_task("m.f", eta=NOW)] for _ in range(8)]
    calls[3] = [create_task("m.f", eta=NOW), existing]  # refused: a duplicate id
    outcomes: dict[int, Any] = {}

    def call(index: int, tasks: list[Task]) -> None:
        try:
            outcomes[index] = store.enqueue_blocking(tasks)
        except ValueError as exc:
            outcomes[index] = exc

    leader = threading.Thread(target=call, args=(-1, [existing]))
    leader.start()
    wait_for(
        lambda: store._thread_groups is not None and store._thread_groups[1]._committing,
        5,
        "the first commit to start",
    )
    assert store._thread_groups is not None
    groups = store._thread_groups[1]
    followers = [threading.Thread(target=call, args=(i, c)) for i, c in enumerate(calls)]
    for thread in followers:
        thread.start()
    wait_for(lambda: len(groups._waiting) == len(calls), 5, "every thread to wait")
    release.set()
    for thread in [leader, *followers]:
        thread.join(10)
    assert len(commits) == 2  # the first call's commit, then the eight others together
    assert outcomes[-1] == [existing.id]
    for index, tasks in enumerate(calls):
        if index == 3:
            assert isinstance(outcomes[index], ValueError)
            assert "already exists" in str(outcomes[index])
        else:
            assert outcomes[index] == [tasks[0].id]
    assert sqlite3.connect(store.path).execute("SELECT count(*) FROM tasks").fetchone() == (8,)
