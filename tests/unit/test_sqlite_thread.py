"""The SQLite store's connection thread: calls run there, in order, one at a time; their
results and errors reach the awaiting coroutine; and the thread ends when the store is
closed, or dropped without closing, so no program is left with stray threads."""

from __future__ import annotations

import asyncio
import gc
import sqlite3
import threading
from pathlib import Path

import pytest

from omniq_mp.sqlite_thread import SQLiteThread
from tests.waiting import wait_for


def threads_named(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == name]


async def open_thread(tmp_path: Path, name: str) -> SQLiteThread:
    thread = SQLiteThread(name)
    await thread.open(lambda: sqlite3.connect(tmp_path / "t.db", isolation_level=None))
    return thread


async def test_calls_run_in_the_connection_thread_in_order(tmp_path: Path) -> None:
    thread = await open_thread(tmp_path, "omniq-test-order")
    try:
        seen: list[tuple[int, str]] = []

        def note(conn: sqlite3.Connection, i: int) -> int:
            seen.append((i, threading.current_thread().name))
            return conn.execute("SELECT ?", (i,)).fetchone()[0]

        results = await asyncio.gather(*(thread.run(note, i) for i in range(20)))
        assert results == list(range(20))
        assert seen == [(i, "omniq-test-order") for i in range(20)]
    finally:
        await thread.close()


async def test_an_error_in_the_thread_reaches_the_caller(tmp_path: Path) -> None:
    thread = await open_thread(tmp_path, "omniq-test-error")
    try:
        with pytest.raises(sqlite3.OperationalError, match="no such table"):
            await thread.run(lambda conn: conn.execute("SELECT * FROM missing"))
        assert await thread.run(lambda conn: conn.execute("SELECT 1").fetchone()) == (1,)
    finally:
        await thread.close()


async def test_close_ends_the_thread_and_later_calls_are_refused(tmp_path: Path) -> None:
    thread = await open_thread(tmp_path, "omniq-test-close")
    assert threads_named("omniq-test-close")
    await thread.close()
    await thread.close()  # idempotent
    wait_for(lambda: not threads_named("omniq-test-close"), 10, "the thread to end")
    with pytest.raises(RuntimeError, match="not open"):
        await thread.run(lambda conn: None)


async def test_a_thread_dropped_without_close_ends(tmp_path: Path) -> None:
    thread = await open_thread(tmp_path, "omniq-test-dropped")
    await thread.run(lambda conn: None)
    del thread
    gc.collect()
    wait_for(lambda: not threads_named("omniq-test-dropped"), 10, "the thread to end")
