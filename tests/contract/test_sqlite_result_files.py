"""Large results of the SQLite store live in side files (row 30): stored and read back
whole, never left behind by a fenced write, a cancel, a purge or a crash, and never a way
to read files outside the store's own folder."""

from __future__ import annotations

import os
import re
import sqlite3
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from omniq_mp.errors import StorageError
from omniq_mp.models import Settlement, Task, TaskStatus, create_task
from omniq_mp.storage.result_files import SIDE_FILE_MIN
from omniq_mp.storage.sqlite import SQLiteStorage

NOW = 1_000.0
BIG = SIDE_FILE_MIN + 17  # just over the threshold, and not a round number


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStorage]:
    s = SQLiteStorage(tmp_path / "store" / "omniq.db")
    await s.open()
    yield s
    await s.close()


def folder(store: SQLiteStorage) -> Path:
    return store.path.with_name(store.path.name + "-results")


def files(store: SQLiteStorage) -> list[str]:
    return sorted(os.listdir(folder(store))) if folder(store).exists() else []


def raw_result(store: SQLiteStorage, task_id: str) -> object:
    with sqlite3.connect(store.path) as conn:
        return conn.execute("SELECT result FROM tasks WHERE id = ?", (task_id,)).fetchone()[0]


async def running(store: SQLiteStorage, **options: object) -> Task:
    await store.enqueue([create_task("math.sqrt", eta=0.0, **options)])
    [task] = await store.claim(["default"], 1, NOW, NOW + 60, "w1")
    return task


def done(task: Task, result: bytes, token: str | None = None) -> Settlement:
    return Settlement(
        task.id, token or task.lease_token or "", TaskStatus.COMPLETED, result, finished_at=NOW
    )


async def test_a_large_result_goes_to_a_private_file_and_reads_back_whole(
    store: SQLiteStorage,
) -> None:
    task = await running(store)
    result = os.urandom(BIG)
    assert await store.settle([done(task, result)]) == [True]
    [name] = files(store)
    assert raw_result(store, task.id) == name  # the row holds the file's name, as TEXT
    assert stat.S_IMODE(folder(store).stat().st_mode) == 0o700
    assert stat.S_IMODE((folder(store) / name).stat().st_mode) == 0o600
    got = await store.get(task.id)
    assert got is not None and got.result == result
    [listed] = await store.list_tasks(TaskStatus.COMPLETED, None, 10)
    assert listed.result == result


async def test_a_result_under_the_threshold_stays_in_the_row(store: SQLiteStorage) -> None:
    task = await running(store)
    result = os.urandom(SIDE_FILE_MIN - 1)
    assert await store.settle([done(task, result)]) == [True]
    assert raw_result(store, task.id) == result
    assert not folder(store).exists()


async def test_a_fenced_attempt_leaves_no_file(store: SQLiteStorage) -> None:
    task = await running(store)
    assert await store.settle([done(task, os.urandom(BIG), token="stale")]) == [False]
    assert files(store) == []
    assert (await store.get(task.id)).status is TaskStatus.RUNNING  # type: ignore[union-attr]


async def test_a_result_a_cancel_discarded_leaves_no_file(store: SQLiteStorage) -> None:
    task = await running(store)
    await store.cancel(task.id, NOW)  # running: flagged, and the result will be dropped
    assert await store.settle([done(task, os.urandom(BIG))]) == [True]
    got = await store.get(task.id)
    assert got is not None and got.status is TaskStatus.CANCELLED and got.result is None
    assert files(store) == []


async def test_purging_a_task_removes_its_result_file(store: SQLiteStorage) -> None:
    kept, purged = await running(store, result_ttl=10_000.0), None
    assert await store.settle([done(kept, os.urandom(BIG))]) == [True]
    purged = await running(store, result_ttl=1.0)
    assert await store.settle([done(purged, os.urandom(BIG))]) == [True]
    assert len(files(store)) == 2
    assert await store.purge_expired(NOW + 2.0, 100) == 1
    assert files(store) == [raw_result(store, kept.id)]
    assert await store.get(purged.id) is None


async def test_open_sweeps_old_unreferenced_files_and_keeps_the_rest(
    store: SQLiteStorage,
) -> None:
    task = await running(store)
    assert await store.settle([done(task, os.urandom(BIG))]) == [True]
    [referenced] = files(store)
    # What a crash between writing a file and committing its row leaves behind.
    old, young, old_temp = "a" * 32 + ".result", "b" * 32 + ".result", "c" * 32 + ".result.tmp"
    foreign = "notes.txt"  # not ours: never touched, whatever its age
    for name in (old, young, old_temp, foreign):
        (folder(store) / name).write_bytes(b"x")
    two_hours_ago = time.time() - 7200
    for name in (old, old_temp, foreign, referenced):
        os.utime(folder(store) / name, (two_hours_ago, two_hours_ago))
    await store.close()
    await store.open()
    assert files(store) == sorted([referenced, young, foreign])
    assert (await store.get(task.id)).result is not None  # type: ignore[union-attr]


async def test_a_missing_result_file_is_a_storage_error_naming_it(store: SQLiteStorage) -> None:
    task = await running(store)
    assert await store.settle([done(task, os.urandom(BIG))]) == [True]
    [name] = files(store)
    os.unlink(folder(store) / name)
    with pytest.raises(StorageError, match=re.escape(f"side file '{name}' is missing")):
        await store.get(task.id)
    assert await store.list_tasks(TaskStatus.COMPLETED, None, 10) == []  # skipped, logged


async def test_a_row_naming_a_path_outside_the_folder_reads_nothing(
    store: SQLiteStorage, tmp_path: Path
) -> None:
    task = await running(store)
    assert await store.settle([done(task, b"small")]) == [True]
    secret = tmp_path / "secret"
    secret.write_bytes(b"not for the queue")
    with sqlite3.connect(store.path) as conn:  # someone edits the row behind our back
        conn.execute("UPDATE tasks SET result = ? WHERE id = ?", ("../secret", task.id))
    with pytest.raises(StorageError, match=re.escape("'../secret' is missing or unreadable")):
        await store.get(task.id)
