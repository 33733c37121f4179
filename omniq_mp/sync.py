"""The synchronous API, :class:`OmniQ`: the same methods as
:class:`~omniq_mp.core.AsyncOmniQ`, for scripts and notebooks."""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from typing import Any

from omniq_mp.config import Settings
from omniq_mp.core import AsyncOmniQ, task_value
from omniq_mp.decorator import TaskFunction
from omniq_mp.errors import (
    ClientClosedError,
    ResultTimeoutError,
    StorageError,
    TaskNotFoundError,
)
from omniq_mp.eventstore import Event, EventStorage
from omniq_mp.executor import OmniQExecutor
from omniq_mp.futures import TaskFuture, settle_future
from omniq_mp.models import Task, TaskStatus
from omniq_mp.results.base import TaskResult
from omniq_mp.runtime import LoopThread, call_at_exit
from omniq_mp.schedule import Schedule
from omniq_mp.stats import GlobalStatistics, QueueStatistics, WorkerStatistics
from omniq_mp.storage.base import QueueStats, Storage

__all__ = ["OmniQ"]

_MANY_BATCH = 1000  # tasks per transaction in enqueue_many


class OmniQ:
    """The synchronous API, for scripts and notebooks; same methods as :class:`AsyncOmniQ`.

    Work runs on a private event loop in a background thread, so it is safe to use where
    an event loop is already running (Jupyter). Pickling happens in the calling thread.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        config: Settings | None = None,
        storage: Storage | None = None,
        event_storage: EventStorage | None = None,
        **overrides: Any,
    ) -> None:
        self._async = AsyncOmniQ(
            settings, config=config, storage=storage, event_storage=event_storage, **overrides
        )
        self.settings = self._async.settings
        self._loop = LoopThread()
        self._closing = False  # set once close() begins; read by threads in get_result
        # Close at interpreter exit if the user did not: stops workers, closes the store.
        ref = weakref.ref(self)

        def close_at_exit() -> None:
            if (omniq := ref()) is not None:
                omniq.close()

        self._cancel_close_at_exit = call_at_exit(close_at_exit)

    def start(self) -> OmniQ:
        """Start the embedded supervisor and worker processes, as ``with OmniQ()`` does;
        for notebooks, where a ``with`` block cannot span cells. Stop with :meth:`close`
        (also done at interpreter exit)."""
        return self.__enter__()

    def __enter__(self) -> OmniQ:
        try:
            self._loop.call(self._async.__aenter__())
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the embedded supervisor (if any), close the store, stop the loop thread.
        Threads waiting in :meth:`get_result` for tasks still unfinished then raise
        :class:`ClientClosedError`, as futures do (the tasks stay stored)."""
        if self._loop.running:
            self._closing = True
            try:
                self._loop.call(self._async.close())
            finally:
                self._loop.stop()
                self._cancel_close_at_exit()
                # Threads waiting in place look again now, find the store closed and
                # raise, instead of at their next look.
                self._async.stored.bump()

    def enqueue(self, func: Callable[..., Any] | str, /, *args: Any, **kwargs: Any) -> str:
        """Store a call; see :meth:`AsyncOmniQ.enqueue`. Returns the task id."""
        if "cron" in kwargs:
            return self.schedule(func, *args, **kwargs)
        [task_id] = self.enqueue_tasks([self._async.build(func, *args, **kwargs)])
        return task_id

    def get_result(self, task_id: str, timeout: float | None = None) -> Any:
        """Wait for and return the task's value; see :meth:`AsyncOmniQ.get_result`.

        :raises ClientClosedError: this client was closed (by another thread) before the
            task finished.
        """
        task = None if self._loop.on_loop_thread() else self._wait_in_place(task_id, timeout)
        if task is None:  # missing (the result store may hold it), or no waiting in place
            return self._loop.call(self._async.get_result(task_id, timeout))
        if not task.status.is_terminal:
            if self._closing:  # woken by close(), not by the timeout
                raise _closed_while_waiting(task_id)
            message = self._loop.call(self._async.timeout_message(task, timeout))
            raise ResultTimeoutError(message)
        return task_value(task, self._async.queue.signer)

    def _wait_in_place(self, task_id: str, timeout: float | None) -> Task | None:
        """:meth:`AsyncOmniQ.wait_in_thread`, where a close() in another thread ends the
        wait with ClientClosedError: the store closing under the waiter makes its next
        read fail, and that failure means "closed", not a broken store."""
        try:
            return self._async.wait_in_thread(task_id, timeout)
        except StorageError:
            if self._closing:
                raise _closed_while_waiting(task_id) from None
            raise

    def get_stored_result(self, task_id: str) -> TaskResult | None:
        """The task's record in the configured result store (None if absent or none)."""
        return self._loop.call(self._async.get_stored_result(task_id))

    def get_events(self, task_id: str) -> list[Event]:
        """Every stored event of one task, oldest first."""
        return self._loop.call(self._async.get_events(task_id))

    def get_queue_stats(self, queue: str = "default") -> QueueStatistics:
        """Statistics of one queue; see :meth:`AsyncOmniQ.get_queue_stats`."""
        return self._loop.call(self._async.get_queue_stats(queue))

    def get_all_queue_stats(self) -> dict[str, QueueStatistics]:
        """Statistics of every queue."""
        return self._loop.call(self._async.get_all_queue_stats())

    def get_global_stats(self) -> GlobalStatistics:
        """Totals, live supervisors and worker processes."""
        return self._loop.call(self._async.get_global_stats())

    def get_worker_stats(self) -> list[WorkerStatistics]:
        """Each live supervisor and its worker processes."""
        return self._loop.call(self._async.get_worker_stats())

    def get_task(self, task_id: str) -> Task | None:
        """The stored task, or None."""
        return self._loop.call(self._async.get_task(task_id))

    def cancel(self, task_id: str) -> bool:
        """Cancel a task: a pending one never starts, a running one is killed; see
        :meth:`AsyncOmniQ.cancel`."""
        return self._loop.call(self._async.cancel(task_id))

    def stats(self, queues: Sequence[str] | None = None) -> QueueStats:
        """Task counts by status."""
        return self._loop.call(self._async.stats(queues))

    def schedule(
        self,
        func: Callable[..., Any] | str,
        /,
        *args: Any,
        cron: str,
        tz: str = "UTC",
        **kwargs: Any,
    ) -> str:
        """Run a call on a cron schedule; see :meth:`AsyncOmniQ.schedule`."""
        return self._loop.call(self._async.schedule(func, *args, cron=cron, tz=tz, **kwargs))

    def periodic(self) -> list[Schedule]:
        """Every cron schedule, soonest first."""
        return self._loop.call(self._async.periodic())

    def pause(self, schedule_id: str, paused: bool = True) -> Schedule:
        """Pause (or, with ``paused=False``, resume) a cron schedule."""
        return self._loop.call(self._async.pause(schedule_id, paused))

    def unschedule(self, schedule_id: str) -> None:
        """Delete a cron schedule."""
        self._loop.call(self._async.unschedule(schedule_id))

    def dead(self, limit: int = 100) -> list[Task]:
        """Quarantined (DEAD) tasks; see :meth:`AsyncOmniQ.dead`."""
        return self._loop.call(self._async.dead(limit))

    def retry(self, task_ids: Sequence[str] | None = None) -> list[str]:
        """Re-queue DEAD or FAILED tasks; see :meth:`AsyncOmniQ.retry`."""
        return self._loop.call(self._async.retry(task_ids))

    def purge(
        self,
        older_than: timedelta | float | str,
        statuses: Sequence[TaskStatus | str] | str = (TaskStatus.COMPLETED, TaskStatus.FAILED),
    ) -> int:
        """Delete old finished tasks; see :meth:`AsyncOmniQ.purge`."""
        return self._loop.call(self._async.purge(older_than, statuses))

    def build(self, func: Callable[..., Any] | str, /, *args: Any, **kwargs: Any) -> Task:
        """Validate and pickle a call without storing it."""
        return self._async.build(func, *args, **kwargs)

    def enqueue_tasks(self, tasks: Sequence[Task]) -> list[str]:
        """Store built tasks in one transaction."""
        ids = self._async.enqueue_from_thread(tasks, self._loop.loop)
        if ids is None:  # not a store that can, or not open yet (this call opens it)
            ids = self._loop.call(self._async.enqueue_tasks(tasks))
        return ids

    def enqueue_many(
        self, func: Callable[..., Any] | str, calls: Iterable[Sequence[Any]], /, **options: Any
    ) -> list[str]:
        """Store ``func(*args)`` for every ``args`` tuple in ``calls`` (like
        ``itertools.starmap``), with the same task options for all; returns the ids.

        ``func`` is pickled once, and tasks are stored 1,000 per transaction, from the
        calling thread (a second thread committing while this one pickles only makes the
        two wait on each other for the GIL). A batch is all-or-nothing; if ``calls``
        raises, the batches already stored stay stored (their ids are lost with the
        exception, so cancel by other means if that matters: ``map`` does it for you).
        """
        ids: list[str] = []
        builder = self._async.builder(func, **options)
        calls = iter(calls)
        while batch := list(itertools.islice(calls, _MANY_BATCH)):
            ids += self.enqueue_tasks([builder.build(args) for args in batch])
        return ids

    # -- futures -----------------------------------------------------------------------------

    def submit(self, func: Callable[..., Any] | str, /, *args: Any, **kwargs: Any) -> TaskFuture:
        """:meth:`enqueue`, returning a ``concurrent.futures.Future`` of the task's value.

        Task options (``timeout=``, ``queue=`` ...) are taken as in :meth:`enqueue`; use
        :meth:`executor` for the strict ``Executor.submit`` signature.
        """
        return self.future_of(self.enqueue(func, *args, **kwargs))

    def future(self, task_id: str) -> TaskFuture:
        """A future for an existing task, e.g. one enqueued by an earlier kernel.

        :raises TaskNotFoundError: no task has this id.
        """
        if self.get_task(task_id) is None:
            raise TaskNotFoundError(f"no task with id {task_id!r}")
        return self.future_of(task_id)

    def future_of(self, task_id: str) -> TaskFuture:
        """A future for ``task_id`` without checking that it exists (see :meth:`future`)."""
        future = TaskFuture(task_id, self._cancel_from_future)
        signer = self._async.queue.signer  # results are verified before they are unpickled

        def finished(_: str, task: Task | ClientClosedError | None) -> None:
            settle_future(future, task, lambda t: task_value(t, signer))

        self._loop.loop.call_soon_threadsafe(self._async.watcher.watch, task_id, finished)
        return future

    def _cancel_from_future(self, task_id: str) -> bool:
        """``TaskFuture.cancel``: :meth:`cancel`, except in a callback on the loop's own
        thread (another future's done-callback), where waiting would stall the loop: the
        cancel is sent, False returned, and the future turns cancelled once it is stored."""
        if not self._loop.on_loop_thread():
            return self.cancel(task_id)
        self._async.cancel_soon(task_id)
        return False

    def executor(self, **task_options: Any) -> OmniQExecutor:
        """A ``concurrent.futures.Executor`` on this client; ``task_options`` (``timeout``,
        ``max_retries``, ``queue`` ...) apply to every task it submits."""
        return OmniQExecutor(self, **task_options)

    def map(
        self,
        func: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        progress: bool = False,
        **task_options: Any,
    ) -> list[Any]:
        """``[func(*args) for args in zip(*iterables)]``, run as tasks; see
        :meth:`OmniQExecutor.map`. ``progress=True`` shows done, failed and rate."""
        results = self.executor(**task_options).map(
            func, *iterables, timeout=timeout, chunksize=chunksize, progress=progress
        )
        return list(results)

    def task(self, func: Callable[..., Any] | None = None, /, **task_options: Any) -> Any:
        """Decorator: ``@q.task(timeout=30)`` keeps direct calls working and adds
        ``.enqueue(...)``, ``.submit(...)`` and ``.map(...)``; see :class:`TaskFunction`."""
        if func is None:
            return lambda f: TaskFunction(f, self, task_options)
        return TaskFunction(func, self, task_options)


def _closed_while_waiting(task_id: str) -> ClientClosedError:
    # Worded as the error futures and async waiters get from the watcher.
    return ClientClosedError(
        f"task {task_id} had not finished when its client closed; it stays in the store: "
        "read its outcome with a new client"
    )
