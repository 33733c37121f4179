"""Copying finished tasks' outcomes to a separate result store (Redis, PostgreSQL ...).

The queue store stays the source of truth: it holds every outcome the moment it is
settled, so a result store that is slow or down delays the copy, never the queue, and
loses nothing that ``get_result`` could not still read from the queue store.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Sequence

from loguru import logger

from omniq_mp.models import Task
from omniq_mp.results.base import ResultStorage, TaskResult
from omniq_mp.retrying import OutageWriter

__all__ = ["ResultWriter", "result_of"]

_BATCH = 500
_LINGER = 0.02  # seconds: let one write carry the results of a burst of settlements
_STOP_PATIENCE = 5.0


def result_of(task: Task) -> TaskResult:
    """The result record of a finished task."""
    return TaskResult(
        task_id=task.id,
        status=task.status,
        result=task.result,
        error=task.error,
        finished_at=task.finished_at or 0.0,
        expires_at=task.expires_at,
    )


class ResultWriter:
    """Writes finished tasks to ``results`` in batches from a background task.

    :param read_tasks: reads tasks from the queue store (``Storage.get_many``): the copy is
        made from what the queue store holds, so a cancel that won over the worker's
        result is copied as the cancel.
    :param capacity: task ids held while the result store is down; past it the newest are
        not copied (they stay readable through the queue store) and an error says so.
    """

    def __init__(
        self,
        results: ResultStorage,
        read_tasks: Callable[[Sequence[str]], Awaitable[list[Task]]],
        capacity: int = 100_000,
    ) -> None:
        self.results = results
        self.capacity = capacity
        self.skipped = 0
        self._read_tasks = read_tasks
        self._pending: dict[str, None] = {}  # insertion-ordered set
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._stopping = False
        self._give_up_at: float | None = None
        self._outages = OutageWriter("result store")

    def start(self) -> None:
        """Start the background writer (idempotent)."""
        if self._writer is None:
            self._stopping = False
            self._writer = asyncio.create_task(self._run(), name="omniq-results")

    def finished(self, task_id: str) -> None:
        """Copy this task's outcome (it has just been settled in a terminal status)."""
        if len(self._pending) >= self.capacity:
            if self.skipped % 10_000 == 0:
                logger.bind(action="results_not_copied").error(
                    "result store unreachable and {} results waiting: new results stay in "
                    "the queue store only",
                    self.capacity,
                )
            self.skipped += 1
            return
        self._pending[task_id] = None
        self._wake.set()

    async def stop(self) -> None:
        """Write what is pending (retrying an unreachable store for a few seconds)."""
        writer, self._writer = self._writer, None
        if writer is None:
            return
        self._stopping = True
        self._give_up_at = asyncio.get_running_loop().time() + _STOP_PATIENCE
        self._wake.set()
        await writer

    async def _run(self) -> None:
        while True:
            if not self._pending:
                if self._stopping:
                    return
                self._wake.clear()
                await self._wake.wait()
                await asyncio.sleep(_LINGER)
            ids = list(self._pending)[:_BATCH]
            copy = functools.partial(self._copy, ids)
            if not await self._outages.write(copy, self._giving_up, self._is_stopping):
                logger.bind(action="results_not_copied").error(
                    "{} results not copied to the result store (they stay in the queue store)",
                    len(self._pending),
                )
                self._pending.clear()
                return
            for task_id in ids:
                self._pending.pop(task_id, None)

    async def _copy(self, ids: list[str]) -> None:
        tasks = await self._read_tasks(ids)
        done = [result_of(t) for t in tasks if t.status.is_terminal]
        if done:
            await self.results.store(done)

    def _is_stopping(self) -> bool:
        return self._give_up_at is not None

    def _giving_up(self) -> bool:
        at = self._give_up_at
        return at is not None and asyncio.get_running_loop().time() >= at
