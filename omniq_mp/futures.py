"""Futures backed by durable tasks: :class:`TaskFuture` for threads
(``concurrent.futures``) and :class:`TaskHandle` for asyncio.

The task, not the future, is the truth: a future can be dropped and re-attached from its
task id in another process (``q.future(task_id)``), and its result outlives the workers
that computed it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

from omniq_mp.errors import ClientClosedError, TaskCancelledError, TaskNotFoundError
from omniq_mp.models import Task

if TYPE_CHECKING:
    from omniq_mp.core import AsyncOmniQ

__all__ = ["TaskFuture", "TaskHandle", "settle_future"]


class TaskFuture(concurrent.futures.Future[Any]):
    """A ``concurrent.futures.Future`` for one stored task.

    Works with ``as_completed``, ``wait`` and ``asyncio.wrap_future``. ``result(timeout=)``
    raising ``TimeoutError`` leaves the task alone; :meth:`cancel` cancels the task itself,
    killing its process if it is running.
    """

    def __init__(self, task_id: str, cancel_task: Callable[[str], bool]) -> None:
        super().__init__()
        self.task_id = task_id
        self._cancel_task = cancel_task

    def cancel(self) -> bool:
        """Cancel the task: a pending one never runs, a running one is killed.

        :returns: True if the future is now cancelled; False if the task had already
            finished (its result or error arrives as usual).
        """
        if self.done():
            return self.cancelled()
        if not self._cancel_task(self.task_id):
            return False
        return self._mark_cancelled()

    def _mark_cancelled(self) -> bool:
        # The user's thread and the watcher may both get here; the condition's lock is
        # reentrant, so the check and both transitions happen as one step.
        with self._condition:
            if self.cancelled():
                return True
            if not super().cancel():
                return False
            # CANCELLED -> CANCELLED_AND_NOTIFIED, so wait() and as_completed() see it.
            self.set_running_or_notify_cancel()
            return True

    def __repr__(self) -> str:
        return f"<TaskFuture {self.task_id} {self._state.lower()}>"


def settle_future(
    future: TaskFuture, task: Task | ClientClosedError | None, value_of: Callable[[Task], Any]
) -> None:
    """Complete ``future`` from its finished ``task`` (None: the task no longer exists; an
    error: its client closed first)."""
    if future.done():
        return
    try:
        if isinstance(task, ClientClosedError):
            raise task
        if task is None:
            raise TaskNotFoundError(f"task {future.task_id} no longer exists (purged?)")
        value = value_of(task)
    except TaskCancelledError:
        future._mark_cancelled()
    except BaseException as exc:
        _quietly(future.set_exception, exc)
    else:
        _quietly(future.set_result, value)


def _quietly(setter: Callable[[Any], None], value: Any) -> None:
    # A user's cancel() may win the race with the watcher; the future is then done already.
    try:
        setter(value)
    except concurrent.futures.InvalidStateError:
        pass


class TaskHandle:
    """An awaitable handle on one stored task: ``value = await handle``.

    ``task_id`` is known at once. With ``key=``, a duplicate enqueue resolves to the task
    already holding the key; ``await handle.enqueued()`` gives that id.
    """

    def __init__(self, omniq: AsyncOmniQ, task_id: str, stored: asyncio.Task[str] | None) -> None:
        self.task_id = task_id
        self._omniq = omniq
        self._stored = stored

    async def enqueued(self) -> str:
        """Wait until the task is stored; return its id."""
        if self._stored is not None:
            self.task_id = await self._stored
        return self.task_id

    async def result(self, timeout: float | None = None) -> Any:
        """The task's value; see :meth:`AsyncOmniQ.get_result`. A timeout leaves the task
        running."""
        return await self._omniq.get_result(await self.enqueued(), timeout)

    async def cancel(self) -> bool:
        """Cancel the task (killing it if running); see :meth:`AsyncOmniQ.cancel`."""
        return await self._omniq.cancel(await self.enqueued())

    async def done(self) -> bool:
        """True once the task has finished, whatever the outcome."""
        task = await self._omniq.get_task(await self.enqueued())
        return task is not None and task.status.is_terminal

    def __await__(self) -> Generator[Any, None, Any]:
        return self.result().__await__()

    def __repr__(self) -> str:
        return f"<TaskHandle {self.task_id}>"
