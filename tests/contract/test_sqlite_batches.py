"""Batched enqueues on SQLite builds whose statements take few parameters."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from omniq_mp.models import Settlement, TaskError, TaskStatus, create_task
from omniq_mp.storage.sqlite import SQLiteStorage


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStorage]:
    """An open store whose connection takes at most 999 parameters per statement."""
    storage = SQLiteStorage(tmp_path / "omniq.db")
    await storage.open()

    def limit(conn: sqlite3.Connection) -> None:
        conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)

    try:
        await storage._open_thread().run(limit)
        yield storage
    finally:
        await storage.close()


async def test_a_big_batch_fits_sqlite_builds_limited_to_999_parameters(
    store: SQLiteStorage,
) -> None:
    # Before SQLite 3.32 a statement took at most 999 parameters; several rows go in each
    # INSERT, so their count must follow the connection's limit or every batch fails.
    tasks = [create_task("m.f") for _ in range(1_234)]
    assert await store.enqueue(tasks) == [t.id for t in tasks]
    ran = create_task("m.f", attempts=1, crashes=1)  # the full row: 26 parameters
    assert await store.enqueue([ran, *(create_task("m.f") for _ in range(100))])
    assert (await store.stats(None, 0)).pending == 1_234 + 101


async def test_a_big_batch_of_outcomes_fits_999_parameters_and_each_lands_on_its_task(
    store: SQLiteStorage,
) -> None:
    # Outcomes are written many rows per UPDATE, so a batch must split by the limit too,
    # and every row's values (status, result, error, retry time) must reach its own task.
    await store.enqueue([create_task("m.f", max_retries=3) for _ in range(700)])
    now = time.time()
    claimed = await store.claim(["default"], 700, now, now + 60, "w")
    assert len(claimed) == 700
    settlements = []
    for n, task in enumerate(claimed):
        token = task.lease_token or ""
        if n % 3 == 0:  # failed, to run again
            error = TaskError("E", f"failure {n}")
            settlements.append(
                Settlement(task.id, token, TaskStatus.PENDING, error=error, eta=now + n)
            )
        elif n % 3 == 1:
            settlements.append(
                Settlement(task.id, token, TaskStatus.COMPLETED, result=f"r{n}".encode())
            )
        else:  # a stale lease: not applied
            settlements.append(Settlement(task.id, "stale", TaskStatus.COMPLETED, result=b"x"))
    applied = await store.settle(settlements)
    assert applied == [n % 3 != 2 for n in range(700)]
    after = {t.id: t for t in await store.get_many([t.id for t in claimed])}
    for n, task in enumerate(claimed):
        got = after[task.id]
        if n % 3 == 0:
            assert got.status is TaskStatus.PENDING and got.eta == now + n
            assert got.error == TaskError("E", f"failure {n}") and got.lease_token is None
            assert [e.message for e in got.history] == [f"failure {n}"]
        elif n % 3 == 1:
            assert got.status is TaskStatus.COMPLETED and got.result == f"r{n}".encode()
            assert got.finished_at is not None and got.lease_token is None
        else:
            assert got.status is TaskStatus.RUNNING and got.result is None
