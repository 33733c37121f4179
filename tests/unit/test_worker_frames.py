"""The worker's reading of its supervisor's frames (child._Frames): a task taken back
(SKIP) never starts, and a SKIP that comes too late never passes for a task."""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Any

from omniq_mp import child, ipc
from tests.waiting import wait_for


class Worker:
    """A worker's frame reader over a socketpair, and the frames it sends back."""

    def __init__(self) -> None:
        self.supervisor, self._theirs = socket.socketpair()
        self.replies: list[tuple[str, dict[str, Any]]] = []
        self.frames = child._Frames(self._theirs, self._reply)

    def _reply(self, kind: str, meta: dict[str, Any], body: bytes) -> None:
        self.replies.append((kind, meta))

    def send(self, kind: str, task_id: str, number: int) -> None:
        ipc.send_frame(self.supervisor, kind, {"task_id": task_id, "n": number}, b"payload")

    def close(self) -> None:
        self.supervisor.close()
        self._theirs.close()


def _waiting_on_its_socket(thread: threading.Thread) -> bool:
    # The kernel's word for where the thread sleeps: in a read of a unix socket.
    wchan = Path(f"/proc/self/task/{thread.native_id}/wchan")
    return "unix_stream_read" in wchan.read_text()


def test_a_task_taken_back_before_it_starts_is_skipped_and_the_next_one_runs() -> None:
    worker = Worker()
    try:
        worker.send(ipc.RUN, "a", 1)
        worker.send(ipc.RUN, "b", 2)
        worker.send(ipc.SKIP, "b", 2)
        worker.send(ipc.RUN, "c", 3)
        started = [worker.frames.next_run(), worker.frames.next_run()]
        assert [f.meta["task_id"] for f in started if f is not None] == ["a", "c"]
        assert worker.replies == [(ipc.SKIPPED, {"task_id": "b", "n": 2})]
    finally:
        worker.close()


def test_a_skip_arriving_while_the_worker_waits_idle_is_not_taken_for_a_task() -> None:
    # The supervisor asked task 1 back just as it started; the worker ran it and went
    # idle before the SKIP came. That SKIP changes nothing: the next task is task 2.
    worker = Worker()
    try:
        worker.send(ipc.RUN, "a", 1)
        first = worker.frames.next_run()
        assert first is not None and first.meta["task_id"] == "a"
        got: list[ipc.Frame | None] = []
        waiting = threading.Thread(target=lambda: got.append(worker.frames.next_run()))
        waiting.start()
        wait_for(lambda: _waiting_on_its_socket(waiting), 5, "the worker to wait for a frame")
        worker.send(ipc.SKIP, "a", 1)
        worker.send(ipc.RUN, "b", 2)
        waiting.join(5)
        assert [f.kind for f in got if f is not None] == [ipc.RUN]
        assert got[0] is not None and got[0].meta["task_id"] == "b"
        assert worker.replies == []  # a late SKIP is not answered: the task has started
    finally:
        worker.close()


def test_the_end_of_the_stream_ends_the_worker_loop() -> None:
    worker = Worker()
    worker.send(ipc.RUN, "a", 1)
    worker.supervisor.shutdown(socket.SHUT_WR)
    try:
        first = worker.frames.next_run()
        assert first is not None and first.meta["task_id"] == "a"
        assert worker.frames.next_run() is None
    finally:
        worker.close()
