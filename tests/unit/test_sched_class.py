"""use_batch_class: the calling thread, and only it, goes to SCHED_BATCH; where the
platform has no such class or refuses the change, it says so and changes nothing. The
store's connection threads (queue, events) run in the class, the caller's thread not."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import pytest

from omniq_mp.eventstore.sqlite import SQLiteEventStorage
from omniq_mp.sched_class import use_batch_class
from omniq_mp.sqlite_thread import SQLiteThread

linux_only = pytest.mark.skipif(
    not hasattr(os, "SCHED_BATCH"), reason="Linux scheduling classes only"
)


def policy_in_new_thread() -> tuple[bool, int]:
    """(use_batch_class's answer, the thread's class after it), in a fresh thread."""
    seen: list[tuple[bool, int]] = []

    def body() -> None:
        seen.append((use_batch_class(), os.sched_getscheduler(0)))

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    return seen[0]


@linux_only
def test_the_calling_thread_moves_and_no_other() -> None:
    before = os.sched_getscheduler(0)
    assert policy_in_new_thread() == (True, os.SCHED_BATCH)
    assert os.sched_getscheduler(0) == before


def test_a_platform_without_the_class_is_told_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "SCHED_BATCH", raising=False)
    assert use_batch_class() is False


@linux_only
def test_a_refusal_leaves_the_thread_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> None:
        raise PermissionError("not allowed here")

    monkeypatch.setattr(os, "sched_setscheduler", refuse)
    answer, policy = policy_in_new_thread()
    assert answer is False
    assert policy == os.sched_getscheduler(0)  # the class it was started with


@linux_only
async def test_the_queue_store_thread_runs_in_the_class(tmp_path: Path) -> None:
    before = os.sched_getscheduler(0)
    thread = SQLiteThread("omniq-test-class")
    await thread.open(lambda: sqlite3.connect(tmp_path / "t.db", isolation_level=None))
    try:
        policy = await thread.run(lambda conn: os.sched_getscheduler(0))
    finally:
        await thread.close()
    assert policy == os.SCHED_BATCH
    assert os.sched_getscheduler(0) == before


@linux_only
async def test_the_event_store_thread_runs_in_the_class(tmp_path: Path) -> None:
    before = os.sched_getscheduler(0)
    events = SQLiteEventStorage(tmp_path / "events.db")
    await events.open()
    try:
        # aiosqlite runs a callable in the connection's thread through _execute.
        policy = await events._connection()._execute(os.sched_getscheduler, 0)  # type: ignore[no-untyped-call]
    finally:
        await events.close()
    assert policy == os.SCHED_BATCH
    assert os.sched_getscheduler(0) == before
