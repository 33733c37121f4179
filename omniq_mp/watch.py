"""Watching running tasks from the supervisor: cancellations and memory limits.

    every WATCH_INTERVAL while tasks are held:
      storage.cancel_requests(held ids) ──> kill the running ones (ABORTED, cancelled),
                                            hand back the unstarted ones (stored CANCELLED)
      RSS of each busy worker's tree  ──> over the task's max_memory: kill (CRASHED, memory)

Both act from outside the task, so neither depends on the task cooperating: a C loop that
holds the GIL is stopped like any other.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping

import psutil
from loguru import logger

from omniq_mp.models import ErrorKind, OutcomeKind, Task
from omniq_mp.pool import ProcessPool
from omniq_mp.proctree import descendants
from omniq_mp.storage.base import Storage
from omniq_mp.units import format_bytes

__all__ = ["WATCH_INTERVAL", "TaskWatch", "cpu_seconds", "tree_rss"]

WATCH_INTERVAL = 0.1  # seconds; bounds how late a cancel or a memory kill can be


def tree_rss(pid: int) -> int:
    """Resident memory of a process and all its descendants, in bytes (0 if gone)."""
    total = 0
    with contextlib.suppress(psutil.Error):
        total += psutil.Process(pid).memory_info().rss
    for proc in descendants(pid):
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    return total


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used, in seconds (0 if gone)."""
    with contextlib.suppress(psutil.Error):
        times = psutil.Process(pid).cpu_times()
        return round(times.user + times.system, 3)
    return 0.0


class TaskWatch:
    """Enforces cancellations and per-task memory limits on one supervisor's tasks.

    :param pool: the process pool running the tasks.
    :param storage: where cancellation requests are read.
    :param held: the supervisor's claimed, unsettled tasks by id.
    :param drop_unstarted: called with the id of a claimed task that has not started and
        was cancelled; the supervisor removes it from its buffer and settles it.
    """

    def __init__(
        self,
        pool: ProcessPool,
        storage: Storage,
        held: Callable[[], Mapping[str, Task]],
        drop_unstarted: Callable[[str], None],
    ) -> None:
        self.pool = pool
        self.storage = storage
        self.held = held
        self.drop_unstarted = drop_unstarted

    async def step(self) -> None:
        """One round of checks."""
        held = self.held()
        if not held:
            return
        for task_id in await self.storage.cancel_requests(list(held)):
            self.cancel(task_id)
        self.enforce_memory(held)

    def cancel(self, task_id: str) -> None:
        """Stop a cancelled task wherever it is in this supervisor."""
        killed = self.pool.abort(
            task_id,
            "cancelled while running; its process was killed",
            ErrorKind.CANCELLED,
            OutcomeKind.ABORTED,
            "Cancelled",
        )
        if killed:
            logger.bind(task_id=task_id, action="task_cancelled").info(
                "task {} cancelled while running: killing its process", task_id
            )
        else:
            self.drop_unstarted(task_id)

    def enforce_memory(self, held: Mapping[str, Task]) -> None:
        """Kill any running task whose process tree uses more than its ``max_memory``."""
        for task_id, worker in self.pool.running().items():
            task = held.get(task_id)
            if task is None or task.max_memory is None:
                continue
            used = tree_rss(worker.pid)
            if used > task.max_memory:
                over = used - task.max_memory
                reason = (
                    f"task exceeded its memory limit of {format_bytes(task.max_memory)} "
                    f"by {format_bytes(over)} ({format_bytes(used)} resident); "
                    f"worker process {worker.pid} was killed"
                )
                if self.pool.abort(
                    task_id, reason, ErrorKind.MEMORY, OutcomeKind.CRASHED, "MemoryLimitExceeded"
                ):
                    logger.bind(task_id=task_id, action="task_memory_limit").warning(reason)
