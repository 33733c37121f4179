"""Large payloads and results of the SQLite store live in side files (row 30): stored and
read back whole, never rewritten when their row changes, never left behind by a refused
enqueue, a fenced write, a cancel, a purge or a crash, and never a way to read files
outside the store's own folder."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import sqlite3
import stat
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from omniq_mp.errors import StorageError
from omniq_mp.models import Settlement, Task, TaskStatus, create_task
from omniq_mp.storage.side_files import SIDE_FILE_MIN
from omniq_mp.storage.sqlite import SQLiteStorage
from tests.waiting import until

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
    return raw(store, task_id, "result")


def raw(store: SQLiteStorage, task_id: str, column: str) -> object:
    with sqlite3.connect(store.path) as conn:
        return conn.execute(f"SELECT {column} FROM tasks WHERE id = ?", (task_id,)).fetchone()[0]


def big_task(**options: object) -> Task:
    return create_task("math.sqrt", os.urandom(BIG), eta=0.0, **options)


async def big_first_then_small(store: SQLiteStorage) -> tuple[Task, Task]:
    """A task with a large payload, claimed first, and one with a small one."""
    big, small = big_task(priority=1), create_task("math.sqrt", b"small", eta=0.0)
    await store.enqueue([big, small])
    return big, small


async def claimed_ids(store: SQLiteStorage) -> list[str]:
    return [t.id for t in await store.claim(["default"], 10, NOW, NOW + 60, "w1")]


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
    with pytest.raises(StorageError, match=re.escape("'../secret' is missing")):
        await store.get(task.id)


# -- payloads ------------------------------------------------------------------------------


async def test_a_large_payload_goes_to_a_private_file_and_stays_there_through_its_run(
    store: SQLiteStorage,
) -> None:
    # SQLite rewrites a whole row at every UPDATE: with the payload in the row, its claim
    # and its settlement each copied it again (4.3 s to run len() on 100 MiB).
    task = big_task()
    assert await store.enqueue([task]) == [task.id]
    [name] = files(store)
    assert name.endswith(".payload") and raw(store, task.id, "payload") == name
    assert stat.S_IMODE((folder(store) / name).stat().st_mode) == 0o600
    [claimed] = await store.claim(["default"], 1, NOW, NOW + 60, "w1")
    assert claimed.payload == task.payload
    assert await store.settle([done(claimed, b"ok")]) == [True]
    assert raw(store, task.id, "payload") == name  # neither write touched it
    database = sum(os.path.getsize(p) for p in store.path.parent.glob("omniq.db*") if p.is_file())
    assert database < BIG // 4
    got = await store.get(task.id)
    assert got is not None and got.payload == task.payload and got.result == b"ok"
    [listed] = await store.list_tasks(TaskStatus.COMPLETED, None, 10)
    assert listed.payload == task.payload


async def test_the_synchronous_clients_enqueue_files_large_payloads_too(
    store: SQLiteStorage,
) -> None:
    small, large = create_task("math.sqrt", b"small", eta=0.0), big_task()
    assert store.enqueue_blocking([small, large]) == [small.id, large.id]
    [name] = files(store)
    assert raw(store, large.id, "payload") == name
    assert raw(store, small.id, "payload") == b"small"
    claimed = await store.claim(["default"], 2, NOW, NOW + 60, "w1")
    assert {t.id: t.payload for t in claimed} == {small.id: b"small", large.id: large.payload}


async def test_a_payload_under_the_threshold_stays_in_the_row(store: SQLiteStorage) -> None:
    task = create_task("math.sqrt", os.urandom(SIDE_FILE_MIN - 1), eta=0.0)
    await store.enqueue([task])
    assert raw(store, task.id, "payload") == task.payload
    assert not folder(store).exists()


async def test_a_task_whose_key_is_held_leaves_no_payload_file(store: SQLiteStorage) -> None:
    holder = create_task("math.sqrt", b"small", key="nightly")
    await store.enqueue([holder])
    assert await store.enqueue([big_task(key="nightly")]) == [holder.id]
    assert store.enqueue_blocking([big_task(key="nightly")]) == [holder.id]
    assert files(store) == []


async def test_a_refused_enqueue_leaves_no_payload_file_and_the_stored_task_whole(
    store: SQLiteStorage,
) -> None:
    first = big_task()
    await store.enqueue([first])
    [name] = files(store)
    again = dataclasses.replace(big_task(), id=first.id)
    with pytest.raises(ValueError, match="already exists"):
        await store.enqueue([again])
    with pytest.raises(ValueError, match="already exists"):
        store.enqueue_blocking([again])
    assert files(store) == [name]
    got = await store.get(first.id)
    assert got is not None and got.payload == first.payload


async def test_purging_a_task_removes_its_payload_file(store: SQLiteStorage) -> None:
    kept, purged = big_task(result_ttl=10_000.0), big_task(result_ttl=1.0)
    await store.enqueue([kept, purged])
    for task in await store.claim(["default"], 2, NOW, NOW + 60, "w1"):
        assert await store.settle([done(task, b"ok")]) == [True]
    assert await store.purge_expired(NOW + 2.0, 100) == 1
    assert files(store) == [raw(store, kept.id, "payload")]


async def test_a_missing_payload_file_sets_its_task_aside_at_claim_not_the_others(
    store: SQLiteStorage,
) -> None:
    lost, fine = await big_first_then_small(store)
    [name] = files(store)
    os.unlink(folder(store) / name)
    assert await claimed_ids(store) == [fine.id]
    got = await store.get(lost.id)
    assert got is not None and got.status is TaskStatus.DEAD
    assert got.error is not None and f"side file '{name}' is missing" in got.error.message


async def test_a_missing_payload_file_takes_no_place_in_a_claim_bounded_in_bytes(
    store: SQLiteStorage,
) -> None:
    lost, fine = await big_first_then_small(store)
    os.unlink(folder(store) / files(store)[0])
    # One task may come, whatever its size: the task that can run, not the lost one.
    claimed = await store.claim(["default"], 10, NOW, NOW + 60, "w1", max_bytes=0)
    assert [t.id for t in claimed] == [fine.id]
    got = await store.get(lost.id)
    assert got is not None and got.status is TaskStatus.DEAD


async def test_open_sweeps_old_orphaned_payload_files_and_keeps_referenced_ones(
    store: SQLiteStorage,
) -> None:
    task = big_task()
    await store.enqueue([task])
    [referenced] = files(store)
    orphan, orphan_temp = "d" * 32 + ".payload", "e" * 32 + ".payload.tmp"
    two_hours_ago = time.time() - 7200
    for name in (orphan, orphan_temp):
        (folder(store) / name).write_bytes(b"x")
    for name in (orphan, orphan_temp, referenced):
        os.utime(folder(store) / name, (two_hours_ago, two_hours_ago))
    await store.close()
    await store.open()
    assert files(store) == [referenced]
    [claimed] = await store.claim(["default"], 1, NOW, NOW + 60, "w1")
    assert claimed.payload == task.payload


async def test_an_interval_tasks_next_run_keeps_its_large_payload_in_a_file_of_its_own(
    store: SQLiteStorage,
) -> None:
    first = big_task(interval=10.0, key="series")
    await store.enqueue([first])
    [t] = await store.claim(["default"], 1, NOW, NOW + 60, "w1")
    nxt = t.rerun(NOW + 10, NOW)
    settled = Settlement(
        t.id, t.lease_token or "", TaskStatus.COMPLETED, finished_at=NOW, follow_up=nxt
    )
    assert await store.settle([settled]) == [True]
    name = raw(store, nxt.id, "payload")
    assert isinstance(name, str) and name != raw(store, first.id, "payload")
    assert sorted(files(store)) == sorted([name, raw(store, first.id, "payload")])
    got = await store.get(nxt.id)
    assert got is not None and got.payload == first.payload


async def test_a_next_run_not_stored_leaves_no_payload_file(store: SQLiteStorage) -> None:
    await store.enqueue([big_task(interval=10.0, key="series")])
    [t] = await store.claim(["default"], 1, NOW, NOW + 60, "w1")
    await store.cancel(t.id, NOW)  # the series stops: its next run is not stored
    nxt = t.rerun(NOW + 10, NOW)
    settled = Settlement(
        t.id, t.lease_token or "", TaskStatus.COMPLETED, finished_at=NOW, follow_up=nxt
    )
    assert await store.settle([settled]) == [True]
    assert await store.get(nxt.id) is None
    assert files(store) == [raw(store, t.id, "payload")]


async def test_a_payload_file_that_cannot_be_read_sets_its_task_aside_keeping_it(
    store: SQLiteStorage,
) -> None:
    # No permission, an I/O error: the other tasks must still be claimed, and the task
    # must not lose its payload (its column was cleared and the intact file then swept).
    stuck, fine = await big_first_then_small(store)
    name = raw(store, stuck.id, "payload")
    path = folder(store) / str(name)
    path.rename(path.with_name("aside"))
    path.mkdir()  # reading it fails with EISDIR, as an unreadable file would
    assert await claimed_ids(store) == [fine.id]
    assert raw(store, stuck.id, "status") == "DEAD" and raw(store, stuck.id, "payload") == name
    error = str(raw(store, stuck.id, "error"))
    assert "cannot read the payload file" in error and str(path) in error
    with pytest.raises(StorageError, match="cannot read the payload file"):
        await store.get(stuck.id)
    path.rmdir()
    path.with_name("aside").rename(path)  # the fault is mended: a retry runs it whole
    assert await store.revive([stuck.id], NOW) == [stuck.id]
    [claimed] = await store.claim(["default"], 1, NOW, NOW + 60, "w1")
    assert claimed.id == stuck.id and claimed.payload == stuck.payload


async def test_a_task_enqueued_again_under_its_own_id_and_key_leaves_no_file(
    store: SQLiteStorage,
) -> None:
    # Its key holder is itself, so the call returns its own id: only the rows can tell
    # that the new file was not stored.
    task = big_task(key="nightly")
    assert await store.enqueue([task]) == [task.id]
    assert await store.enqueue([task]) == [task.id]
    assert store.enqueue_blocking([task, task]) == [task.id, task.id]
    assert files(store) == [raw(store, task.id, "payload")]


async def test_an_enqueue_cancelled_before_its_turn_leaves_no_file_behind(
    store: SQLiteStorage,
) -> None:
    release = threading.Event()
    # The store's thread is held, so the first call's commit waits, and the second call
    # waits for the first's group.
    holding = asyncio.ensure_future(store._open_thread().run(lambda _conn: release.wait()))
    first = asyncio.ensure_future(store.enqueue([create_task("math.sqrt", b"small")]))
    second = asyncio.ensure_future(store.enqueue([big_task()]))
    await until(lambda: _true(len(files(store)) == 1), 10, "the second call's file")
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second
    release.set()
    await holding
    await first
    await until(lambda: _true(files(store) == []), 10, "the unused file to go")
    assert (await store.stats(None, NOW)).pending == 1


async def test_an_enqueue_cancelled_during_its_commit_keeps_its_stored_file(
    store: SQLiteStorage,
) -> None:
    release = threading.Event()
    holding = asyncio.ensure_future(store._open_thread().run(lambda _conn: release.wait()))
    task = big_task()
    call = asyncio.ensure_future(store.enqueue([task]))
    await until(lambda: _true(store._open_thread()._jobs.qsize() == 1), 10, "its commit")
    call.cancel()  # its commit is queued behind the held thread: it will land
    with pytest.raises(asyncio.CancelledError):
        await call
    release.set()
    await holding
    await store.close()  # waits for the commits under way, and the tidying after them
    await store.open()
    [claimed] = await store.claim(["default"], 1, NOW, NOW + 60, "w1")
    assert claimed.id == task.id and claimed.payload == task.payload


async def test_a_settlement_cancelled_during_its_commit_keeps_the_files_it_stored(
    store: SQLiteStorage,
) -> None:
    await store.enqueue([big_task(interval=10.0)])
    [t] = await store.claim(["default"], 1, NOW, NOW + 60, "w1")
    nxt = t.rerun(NOW + 10, NOW)
    settled = Settlement(
        t.id, t.lease_token or "", TaskStatus.COMPLETED, os.urandom(BIG), follow_up=nxt
    )
    release = threading.Event()
    holding = asyncio.ensure_future(store._open_thread().run(lambda _conn: release.wait()))
    call = asyncio.ensure_future(store.settle([settled]))
    await until(lambda: _true(store._open_thread()._jobs.qsize() == 1), 10, "its commit")
    call.cancel()  # a supervisor stopping: the commit queued behind the held thread lands
    with pytest.raises(asyncio.CancelledError):
        await call
    release.set()
    await holding
    await store.close()
    await store.open()
    done_run, next_run = await store.get(t.id), await store.get(nxt.id)
    assert done_run is not None and done_run.result == settled.result
    assert next_run is not None and next_run.payload == t.payload


async def _true(value: bool) -> bool:
    return value
