"""Batched enqueues on SQLite builds whose statements take few parameters."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from omniq_mp.models import create_task
from omniq_mp.storage.sqlite import SQLiteStorage


async def test_a_big_batch_fits_sqlite_builds_limited_to_999_parameters(tmp_path: Path) -> None:
    # Before SQLite 3.32 a statement took at most 999 parameters; several rows go in each
    # INSERT, so their count must follow the connection's limit or every batch fails.
    store = SQLiteStorage(tmp_path / "omniq.db")
    await store.open()
    try:

        def limit(conn: sqlite3.Connection) -> None:
            conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)

        await store._open_thread().run(limit)
        tasks = [create_task("m.f") for _ in range(1_234)]
        assert await store.enqueue(tasks) == [t.id for t in tasks]
        ran = create_task("m.f", attempts=1, crashes=1)  # the full row: 26 parameters
        assert await store.enqueue([ran, *(create_task("m.f") for _ in range(100))])
        assert (await store.stats(None, 0)).pending == 1_234 + 101
    finally:
        await store.close()
