"""A thread blocked in ``OmniQ.get_result`` when another thread closes the client wakes at
once with :class:`ClientClosedError`, as futures and async waiters do: not a store error,
and not a wait until its own timeout."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from omniq_mp import OmniQ, Settings
from omniq_mp.errors import ClientClosedError
from omniq_mp.models import Task
from tests.e2e.conftest import task_waiting_for, wait_running

pytestmark = pytest.mark.e2e

WAIT = 60.0  # the waiter's own timeout: far longer than any close may take
PROMPTLY = 20.0


class Waiter:
    """``q.get_result(task_id, timeout=WAIT)`` in a thread of its own."""

    def __init__(self, q: OmniQ, task_id: str) -> None:
        self.outcome: BaseException | None = None
        self.took = 0.0
        self._thread = threading.Thread(target=self._wait, args=(q, task_id), daemon=True)
        self._thread.start()

    def _wait(self, q: OmniQ, task_id: str) -> None:
        began = time.monotonic()
        try:
            q.get_result(task_id, timeout=WAIT)
        except BaseException as exc:  # handed to the test, which judges it
            self.outcome = exc
        self.took = time.monotonic() - began

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"get_result still waiting {timeout}s after close"


def looked_at(q: OmniQ, monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Set once a thread reads a task in place: proof it is waiting in get_result."""
    looked = threading.Event()
    read = q._async.storage.get_blocking  # type: ignore[attr-defined]

    def get_blocking(task_id: str) -> Task | None:
        looked.set()
        task: Task | None = read(task_id)
        return task

    monkeypatch.setattr(q._async.storage, "get_blocking", get_blocking)
    return looked


def assert_closed_while_waiting(waiter: Waiter, task_id: str) -> None:
    assert isinstance(waiter.outcome, ClientClosedError), repr(waiter.outcome)
    assert task_id in str(waiter.outcome) and "new client" in str(waiter.outcome)
    assert waiter.took < WAIT / 2


def test_close_wakes_a_thread_waiting_for_a_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    q = OmniQ(Settings(base_dir=tmp_path / "store"))
    try:
        task_id = q.enqueue(time.sleep, 30)  # no worker: it stays pending
        looked = looked_at(q, monkeypatch)
        waiter = Waiter(q, task_id)
        assert looked.wait(PROMPTLY), "get_result never read the task"
    finally:
        q.close()
    waiter.join(PROMPTLY)
    assert_closed_while_waiting(waiter, task_id)
    with OmniQ(Settings(base_dir=tmp_path / "store")) as again:  # the task stayed stored
        task = again.get_task(task_id)
        assert task is not None and not task.status.is_terminal


def test_close_wakes_a_waiter_once_the_clients_own_workers_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "release"
    q = OmniQ(Settings(base_dir=tmp_path / "store", procs=1, shutdown_grace=1)).start()
    try:
        task_id = q.enqueue(task_waiting_for(marker))
        wait_running(q, task_id)
        looked = looked_at(q, monkeypatch)
        waiter = Waiter(q, task_id)
        assert looked.wait(PROMPTLY), "get_result never read the task"
    finally:
        q.close()  # the running task is stopped with the workers: it never finishes here
        marker.touch()
    waiter.join(PROMPTLY)
    assert_closed_while_waiting(waiter, task_id)
