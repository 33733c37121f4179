"""The user-facing API: :class:`AsyncOmniQ` (its synchronous twin, ``OmniQ``, is in sync.py).

``async with AsyncOmniQ() as q`` / ``with OmniQ() as q`` open the store and run an
embedded supervisor with a local process pool. A bare ``OmniQ()`` (no ``with``) is a
producer: it enqueues and reads results while workers run elsewhere
(``omniq-mp workers``).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import fields
from datetime import datetime, timedelta
from typing import Any

from loguru import logger

from omniq_mp.config import Settings, check_int, check_seconds, size_setting
from omniq_mp.decorator import TaskFunction
from omniq_mp.dsn import redact
from omniq_mp.errors import (
    ClientClosedError,
    ConfigError,
    ResultTimeoutError,
    TaskCancelledError,
    TaskDeadError,
    TaskFailedError,
    TaskNotFoundError,
)
from omniq_mp.events import EventRecorder, enqueued_events
from omniq_mp.events import follow as follow_events
from omniq_mp.eventstore import Event, EventStorage, EventType, StoredEvent, open_event_storage
from omniq_mp.executor import check_chunksize, chunked, run_chunk
from omniq_mp.futures import TaskHandle
from omniq_mp.models import Settlement, Task, TaskStatus, finished_statuses, first_later_eta
from omniq_mp.progress import ProgressBar
from omniq_mp.result_writer import ResultWriter
from omniq_mp.results.base import ResultStorage, TaskResult
from omniq_mp.schedule import Schedule, check_cron, next_cron_time
from omniq_mp.serialization import loads_result
from omniq_mp.signing import Signer, same_call
from omniq_mp.stats import (
    GlobalStatistics,
    QueueStatistics,
    WorkerStatistics,
    all_queue_statistics,
    global_statistics,
    queue_statistics,
    worker_statistics,
)
from omniq_mp.storage import open_storage
from omniq_mp.storage.base import QueueStats, Storage
from omniq_mp.storage.capabilities import EnqueuesFromThreads, ReadsFromThreads, ReadsOutcomes
from omniq_mp.stores import open_result_storage
from omniq_mp.task_builder import ReferenceBuilders, TaskBuilder, TaskOptions, sign_payload
from omniq_mp.units import parse_duration
from omniq_mp.wakeup import CLIENTS, SUPERVISORS, Poker, WakeListener
from omniq_mp.watcher import ResultWatcher, StoredSignal
from omniq_mp.worker import HEARTBEAT_INTERVAL, AsyncWorkerPool

__all__ = ["AsyncOmniQ"]

# A batch larger than this (enqueue_many, map) logs one line, not one per task: a debug
# line costs about a microsecond, a tenth of what storing a task costs in a batch.
_LOGGED_ONE_BY_ONE = 100
# Runs of an interval series cancel() follows when each one it reaches has just finished.
_SERIES_HOPS = 3
# The task options build() and enqueue() take among a call's keyword arguments.
_OPTIONS = tuple(f.name for f in fields(TaskOptions))
# Task options a cron schedule refuses, and why.
_NOT_WITH_CRON = {
    "key": "each due time is its own task",
    "interval": "the cron expression says when the task runs again",
    "eta": "the cron expression says when the task first runs",
}


def _resolve_settings(
    settings: Settings | None, config: Settings | None, overrides: dict[str, Any]
) -> Settings:
    if settings is not None and config is not None:
        raise ConfigError("pass either settings or config=, not both")
    chosen = settings if settings is not None else config
    if chosen is not None and not isinstance(chosen, Settings):
        raise ConfigError(f"settings must be a Settings object, got {type(chosen).__name__}")
    base = chosen if chosen is not None else Settings.from_env()
    try:
        return base.with_overrides(**overrides)
    except TypeError as exc:
        raise ConfigError(f"unknown setting: {exc}") from None


def _split_call(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Sequence[Any], Mapping[str, Any]]:
    """Accept both ``enqueue(f, 1, x=2)`` and ``enqueue("m.f", args=[1], kwargs={"x": 2})``."""
    call_args: Sequence[Any] = args
    if "args" in kwargs:
        if args:
            raise ConfigError("pass positional arguments inline or as args=[...], not both")
        call_args = kwargs.pop("args")
    if "kwargs" in kwargs:
        call_kwargs = kwargs.pop("kwargs")
        if kwargs:
            raise ConfigError("pass keyword arguments inline or as kwargs={...}, not both")
        return call_args, call_kwargs
    return call_args, kwargs


def _wait_seconds(timeout: float | None) -> float | None:
    """A wait's ``timeout``: None (no limit) or seconds >= 0; anything else (NaN, text, a
    negative number) is a ConfigError before any waiting, not a hang or a TypeError."""
    return None if timeout is None else check_seconds("timeout", timeout, allow_zero=True)


class AsyncOmniQ:
    """Enqueue tasks, read results, and (under ``async with``) run them.

    :param settings: a :class:`Settings`; defaults to ``Settings.from_env()``.
    :param config: the same, under the name the storage docs use.
    :param storage: a storage object to use instead of the one settings name.
    :param event_storage: an event store to use instead of the one settings name.
    :param overrides: Settings fields to change, e.g. ``procs=4``.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        config: Settings | None = None,
        storage: Storage | None = None,
        event_storage: EventStorage | None = None,
        result_storage: ResultStorage | None = None,
        **overrides: Any,
    ) -> None:
        self.settings = _resolve_settings(settings, config, overrides)
        self.storage = storage if storage is not None else open_storage(self.settings)
        self.event_storage = event_storage or open_event_storage(self.settings)
        self.recorder = None if self.event_storage is None else EventRecorder(self.event_storage)
        self.result_storage = result_storage or open_result_storage(self.settings)
        # Waiters and the result copy need a task's outcome, not its payload, and read
        # their tasks again and again: a store that can leave payloads out spares a
        # server sending them.
        self._read_outcomes = (
            self.storage.get_outcomes
            if isinstance(self.storage, ReadsOutcomes)
            else self.storage.get_many
        )
        # The synchronous client's shortcuts past the loop, when the store has them.
        # Checked once (a runtime protocol check costs about 10 µs, an enqueue 250); the
        # methods are looked up at each call, so a test may wrap them on the instance.
        self._thread_writer = (
            self.storage if isinstance(self.storage, EnqueuesFromThreads) else None
        )
        self._thread_reader = self.storage if isinstance(self.storage, ReadsFromThreads) else None
        self.result_writer = (
            None
            if self.result_storage is None
            else ResultWriter(self.result_storage, self._read_outcomes)
        )
        self.queue = self.settings.task_queue(self.storage)
        self._open = False
        self._workers: AsyncWorkerPool | None = None
        self._runner: asyncio.Task[int] | None = None
        self.watcher = ResultWatcher(self._read_outcomes)
        self._plain_builders = ReferenceBuilders(self.builder)
        wake_dir = self.settings.wake_dir
        self._supervisors = None if wake_dir is None else Poker(wake_dir, SUPERVISORS)
        self._notes: set[asyncio.Task[None]] = set()  # dedup log lines of thread enqueues
        self.stored = StoredSignal()  # for threads that wait in place (OmniQ.get_result)
        self._wakes = (
            None if wake_dir is None else WakeListener(wake_dir, CLIENTS, self._outcomes_stored)
        )

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the queue, event and result stores (done lazily by every method).

        :raises StorageError: a store cannot be opened (those already open are closed).
        """
        if self._open:
            return
        opened: list[Any] = []
        try:
            for store in (self.storage, self.event_storage, self.result_storage):
                if store is not None:
                    await store.open()
                    opened.append(store)
        except BaseException:
            for store in reversed(opened):
                await store.close()
            raise
        if self.recorder is not None:
            self.recorder.start()
        if self.result_writer is not None:
            self.result_writer.start()
        if self._wakes is not None:
            self._wakes.start()
        self._open = True

    async def close(self) -> None:
        """Stop the embedded supervisor, if any, and close the store. Futures and waiters
        of tasks still unfinished then raise :class:`ClientClosedError` (the tasks stay
        stored); those that finished during the supervisor's stop get their outcome."""
        if self._notes:  # log lines of keys deduplicated by thread enqueues
            await asyncio.gather(*self._notes, return_exceptions=True)
        if self._workers is not None:
            workers, self._workers = self._workers, None
            await workers.stop()
            if self._runner is not None:
                await self._runner
        await self.watcher.close()  # while the store is still open: a last look
        if self._open:
            if self._wakes is not None:
                self._wakes.stop()
            if self._supervisors is not None:
                self._supervisors.close()
            if self.event_storage is not None and self.recorder is not None:
                await self.recorder.stop()
                await self.event_storage.close()
            if self.result_storage is not None and self.result_writer is not None:
                await self.result_writer.stop()
                await self.result_storage.close()
            await self.storage.close()
            self._open = False

    async def __aenter__(self) -> AsyncOmniQ:
        await self.open()
        workers = self.worker_pool()
        await workers.start()
        workers.on_settled.append(self._settled_here)
        self._workers = workers
        self._runner = asyncio.create_task(workers.process_tasks(), name="omniq-supervisor")
        return self

    def _outcomes_stored(self) -> None:
        # A supervisor in another process poked: outcomes were committed there.
        self.watcher.poke()
        self.stored.bump()

    def _settled_here(self, task: Task, _: Settlement) -> None:
        self.watcher.notify(task.id)
        self.stored.settled(task.id)

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def worker_pool(
        self, concurrency: int | None = None, queues: Sequence[str] | None = None
    ) -> AsyncWorkerPool:
        """A supervisor over this store: ``async with q.worker_pool() as w:
        await w.process_tasks(limit=10)``."""
        workers = AsyncWorkerPool(
            self.queue,
            self.settings,
            concurrency=concurrency,
            queues=queues,
            recorder=self.recorder,
            open_stores=self.open,
        )
        if self.result_writer is not None:
            # Every settlement, not only terminal ones: a requested cancel turns a retry
            # into CANCELLED in the store, and the writer copies what the store holds.
            writer = self.result_writer
            workers.on_settled.append(lambda task, _: writer.finished(task.id))
        return workers

    # -- producing ---------------------------------------------------------------------------

    def build(self, func: Callable[..., Any] | str, /, *args: Any, **kwargs: Any) -> Task:
        """Validate and pickle a call into a Task without storing it (see :meth:`enqueue`:
        keyword arguments named like a task option are that option)."""
        options = {name: kwargs.pop(name) for name in _OPTIONS if name in kwargs}
        if "tz" in kwargs:  # a reserved name: it would reach the function as an argument
            raise ConfigError(
                "tz= goes with cron= (the schedule's timezone); pass an argument named tz "
                "as kwargs={'tz': ...}"
            )
        call_args, call_kwargs = _split_call(args, kwargs)
        builder = self.builder(func, **options) if options else self._plain_builders.get(func)
        return builder.build(call_args, call_kwargs)

    def builder(
        self,
        func: Callable[..., Any] | str,
        /,
        *,
        queue: str | None = None,
        priority: int = 0,
        eta: datetime | timedelta | None = None,
        interval: timedelta | int | float | None = None,
        max_retries: int | None = None,
        timeout: float | None = None,
        key: str | None = None,
        max_memory: str | int | None = None,
        result_ttl: timedelta | float | None = None,
    ) -> TaskBuilder:
        """A :class:`TaskBuilder` of calls to ``func`` with these task options (those of
        :meth:`enqueue`): options are checked and ``func`` pickled once, here, so building
        many tasks costs only their arguments. A by-value ``func`` (lambda, closure,
        ``__main__`` function) carries its globals as they are now to every task."""
        options = TaskOptions.checked(
            queue=self.settings.queues[0] if queue is None else queue,
            priority=priority,
            eta=eta,
            interval=interval,
            max_retries=self.settings.max_retries if max_retries is None else max_retries,
            timeout=self.settings.default_timeout if timeout is None else timeout,
            key=key,
            max_memory=max_memory,
            result_ttl=self.settings.result_ttl if result_ttl is None else result_ttl,
        )
        return TaskBuilder(
            func,
            options,
            signer=self.queue.signer,
            max_payload_size=size_setting(self.settings.max_payload_size),
        )

    async def schedule(
        self,
        func: Callable[..., Any] | str,
        /,
        *args: Any,
        cron: str,
        tz: str = "UTC",
        **kwargs: Any,
    ) -> str:
        """Run a call at every due time of a 5-field ``cron`` expression in timezone ``tz``
        (an IANA name); returns the schedule id (``sch-...``).

        Arguments and task options are those of :meth:`enqueue`. However many supervisors
        share the store, each due time runs once; due times missed while none was running
        (or while paused) run once, at the next opportunity.
        """
        check_cron(cron, tz)
        for option, why in _NOT_WITH_CRON.items():
            if kwargs.get(option) is not None:
                raise ConfigError(f"{option}= cannot be combined with cron=: {why}")
        # Each firing is a new task with a new id: the payload is signed for any task.
        template = sign_payload(
            self.build(func, *args, **kwargs), self.queue.signer, recurring=True
        )
        schedule = Schedule(template, cron, tz, next_run=next_cron_time(cron, tz, time.time()))
        await self.open()
        await self.storage.add_schedule(schedule)
        return schedule.id

    async def periodic(self) -> list[Schedule]:
        """Every cron schedule, soonest first."""
        await self.open()
        return await self.storage.schedules()

    async def pause(self, schedule_id: str, paused: bool = True) -> Schedule:
        """Pause a cron schedule (``paused=False`` resumes it)."""
        await self.open()
        schedule = await self.storage.set_paused(schedule_id, paused)
        if schedule is None:
            raise TaskNotFoundError(f"no such schedule: {schedule_id}")
        return schedule

    async def unschedule(self, schedule_id: str) -> None:
        """Delete a cron schedule (tasks it already created are not touched)."""
        await self.open()
        if not await self.storage.remove_schedule(schedule_id):
            raise TaskNotFoundError(f"no such schedule: {schedule_id}")

    async def enqueue(self, func: Callable[..., Any] | str, /, *args: Any, **kwargs: Any) -> str:
        """Store a call to run in a worker process; returns the task id.

        ``func`` is any callable cloudpickle can carry (lambdas and closures included) or a
        dotted path such as ``"package.module.function"``. Arguments go inline
        (``enqueue(f, 1, x=2)``) or as ``args=[...]``, ``kwargs={...}``. Options:
        ``queue``, ``priority``, ``eta`` (datetime or timedelta), ``interval``
        (timedelta or seconds), ``max_retries`` (retries after the first run),
        ``timeout`` (seconds; the task's process is killed past it), ``key`` (one
        unfinished task per key: a repeat returns the existing id), ``max_memory``
        (``"512MB"``; the task is killed past it), ``result_ttl`` (how long the finished
        record is kept).

        With ``cron="*/5 * * * *"`` (and optionally ``tz=``) this is :meth:`schedule` and
        returns the schedule id.

        :raises SerializationError: the call cannot be pickled (nothing is stored).
        :raises ConfigError: an option is invalid (nothing is stored).
        """
        if "cron" in kwargs:
            return await self.schedule(func, *args, **kwargs)
        task = self.build(func, *args, **kwargs)
        [task_id] = await self.enqueue_tasks([task])
        return task_id

    def submit(self, func: Callable[..., Any] | str, /, *args: Any, **kwargs: Any) -> TaskHandle:
        """:meth:`enqueue` without waiting: returns an awaitable handle at once
        (``value = await q.submit(f, x)``). Pickling and validation happen here, so a bad
        call raises now; storing happens in the background and its error, if any, is
        raised by awaiting the handle. Needs a running event loop."""
        task = self.build(func, *args, **kwargs)
        stored = asyncio.get_running_loop().create_task(self._store_one(task))
        return TaskHandle(self, task.id, stored)

    async def _store_one(self, task: Task) -> str:
        [task_id] = await self.enqueue_tasks([task])
        return task_id

    def future(self, task_id: str) -> TaskHandle:
        """An awaitable handle on an existing task (awaiting it raises
        :class:`TaskNotFoundError` if there is none)."""
        return TaskHandle(self, task_id, None)

    async def map(
        self,
        func: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        progress: bool = False,
        **task_options: Any,
    ) -> list[Any]:
        """``[func(*args) for args in zip(*iterables)]`` run as tasks, stored in batches,
        as :meth:`OmniQ.map`: ``chunksize`` > 1 runs that many calls per task; ``timeout``
        (seconds from this call) raises ``TimeoutError``; the first failure raises. Either
        way what has not finished is cancelled. ``progress=True`` shows a bar."""
        check_chunksize(chunksize)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        calls = iter(zip(*iterables, strict=False))
        builder = self.builder(func if chunksize == 1 else run_chunk, **task_options)
        ids: list[str] = []
        sizes: list[int] = []
        try:
            while batch := list(itertools.islice(calls, 500 * chunksize)):
                if chunksize == 1:
                    tasks = [builder.build(args) for args in batch]
                    sizes += [1] * len(batch)
                else:
                    chunks = chunked(batch, chunksize)
                    tasks = [builder.build((func, chunk)) for chunk in chunks]
                    sizes += [len(chunk) for chunk in chunks]
                ids += await self.enqueue_tasks(tasks)
        except BaseException:
            await asyncio.gather(*(self.cancel(i) for i in ids), return_exceptions=True)
            raise
        with ProgressBar(sum(sizes), getattr(func, "__name__", "tasks"), progress) as bar:
            counted = (self._counted(i, bar, n) for i, n in zip(ids, sizes, strict=True))
            waits = asyncio.gather(*counted)
            try:
                left = None if deadline is None else max(0.0, deadline - loop.time())
                values = await asyncio.wait_for(waits, left)
            except BaseException:
                await asyncio.gather(*(self.cancel(i) for i in ids), return_exceptions=True)
                raise
        if chunksize == 1:
            return values
        return [value for chunk in values for value in chunk]

    async def _counted(self, task_id: str, bar: ProgressBar, calls: int = 1) -> Any:
        try:
            value = await self.get_result(task_id)
        except BaseException:
            bar.count(ok=False, items=calls)
            raise
        bar.count(ok=True, items=calls)
        return value

    def task(self, func: Callable[..., Any] | None = None, /, **task_options: Any) -> Any:
        """Decorator: ``@q.task(timeout=30)``; ``await f.enqueue(...)``, ``await
        f.submit(...)``, ``await f.map(items)``; direct calls still run here."""
        if func is None:
            return lambda f: TaskFunction(f, self, task_options)
        return TaskFunction(func, self, task_options)

    async def enqueue_tasks(self, tasks: Sequence[Task]) -> list[str]:
        """Store tasks built with :meth:`build`, all in one transaction."""
        await self.open()
        now = time.time()
        ids = await self.queue.enqueue_tasks(tasks)
        emit = None if self.recorder is None else self.recorder.emit_many
        for task, existing_id in self._note_enqueued(tasks, ids, emit, now):
            await self._log_duplicate(task, existing_id)
        due = first_later_eta(tasks, now)
        if self._workers is not None:
            self._workers.wake(due)
        if self._supervisors is not None:
            self._supervisors.poke(due)
        return ids

    def enqueue_from_thread(
        self, tasks: Sequence[Task], loop: asyncio.AbstractEventLoop
    ) -> list[str] | None:
        """Store tasks from a thread other than ``loop``'s (the one this client runs on),
        without a trip through the loop, when the store can (SQLite); None when it cannot
        or is not open yet, and the caller goes through :meth:`enqueue_tasks` instead.

        Supervisors are woken from the calling thread at once. The loop is only involved
        for what lives there: the events (handed over once per linger period), an
        embedded supervisor's wake-up and the log line of a deduplicated key."""
        writer = self._thread_writer
        if not self._open or writer is None:
            return None
        now = time.time()
        ids = writer.enqueue_blocking(tasks)
        due = first_later_eta(tasks, now)
        if self._supervisors is not None:
            self._supervisors.poke(due)
        recorder = self.recorder
        emit: Callable[[Sequence[Event]], None] | None = None
        if recorder is not None and self._workers is None:
            emit = functools.partial(recorder.emit_from_thread, loop=loop)
        elif recorder is not None:
            # Queued at once: ahead of the STARTED event our own supervisor emits next.
            def emit(events: Sequence[Event]) -> None:
                loop.call_soon_threadsafe(recorder.emit_many, events)

        duplicates = self._note_enqueued(tasks, ids, emit, now)
        if duplicates or self._workers is not None:
            loop.call_soon_threadsafe(self._after_thread_enqueue, duplicates, due)
        return ids

    def _after_thread_enqueue(
        self, duplicates: list[tuple[Task, str]], due: float | None = None
    ) -> None:
        if self._workers is not None:
            self._workers.wake(due)
        for task, existing_id in duplicates:
            note = asyncio.create_task(self._log_duplicate(task, existing_id))
            self._notes.add(note)  # held until done: the loop keeps only weak references
            note.add_done_callback(self._notes.discard)

    def _note_enqueued(
        self,
        tasks: Sequence[Task],
        ids: Sequence[str],
        emit: Callable[[Sequence[Event]], None] | None,
        now: float,
    ) -> list[tuple[Task, str]]:
        """Log lines and ENQUEUED events (through ``emit``) of committed tasks, stamped
        ``now``, taken before the commit; returns (task, existing id) of those a key
        deduplicated."""
        duplicates, events = [], []
        one_by_one = len(tasks) <= _LOGGED_ONE_BY_ONE
        for task, task_id in zip(tasks, ids, strict=True):
            if task_id != task.id:
                duplicates.append((task, task_id))
                continue
            if one_by_one:  # context as keywords: no bound logger per task (see worker.py)
                logger.debug(
                    "task {} ({}) enqueued on {}", task.id, task.func_name, task.queue,
                    task_id=task.id, action="task_enqueued",
                )  # fmt: skip
            if emit is not None:
                events += enqueued_events(task, now)
        if not one_by_one:
            logger.bind(action="tasks_enqueued").debug(
                "{} tasks enqueued, {} to {}", len(tasks) - len(duplicates), ids[0], ids[-1]
            )
        if events and emit is not None:
            emit(events)
        return duplicates

    # -- reading -----------------------------------------------------------------------------

    async def get_events(self, task_id: str) -> list[Event]:
        """Every stored event of one task, oldest first (empty when events are off).

        Oldest by timestamp, not by store position: a task's ENQUEUED event, emitted by
        the client once its commit returns, may be written after the STARTED event a
        supervisor emitted meanwhile (from another process, or when the client's thread
        was descheduled right after the commit). ENQUEUED is stamped before the commit,
        so it sorts first; events stamped alike keep their recorded order."""
        stored = [stored.event async for stored in self.events(task_id=task_id)]
        return sorted(stored, key=lambda event: event.timestamp)

    async def events(
        self,
        *,
        follow: bool = False,
        after: int = 0,
        task_id: str | None = None,
        types: Sequence[EventType] | None = None,
    ) -> AsyncIterator[StoredEvent]:
        """Stored events after position ``after``; with ``follow``, keep yielding new ones
        as they are written, by this process or any other using the same event store.
        Each item has ``position`` (to resume from) and ``event``."""
        await self.open()
        if self.event_storage is None:
            return
        if self.recorder is not None:
            await self.recorder.flush()  # our own emitted events first
        async for stored in follow_events(
            self.event_storage, after, task_id=task_id, types=types, live=follow
        ):
            yield stored

    async def get_queue_stats(self, queue: str = "default") -> QueueStatistics:
        """Depth, scheduled, running, terminal totals and last-minute throughput of a queue."""
        await self.open()
        return await queue_statistics(self.storage, queue, time.time())

    async def get_all_queue_stats(self) -> dict[str, QueueStatistics]:
        """:meth:`get_queue_stats` for every queue that holds tasks."""
        await self.open()
        return await all_queue_statistics(self.storage, time.time())

    async def get_global_stats(self) -> GlobalStatistics:
        """Totals across queues, and the live supervisors and worker processes."""
        await self.open()
        return await global_statistics(self.storage, time.time(), self._alive_since())

    async def get_worker_stats(self) -> list[WorkerStatistics]:
        """Each live supervisor and what each of its worker processes is running."""
        await self.open()
        return await worker_statistics(self.storage, time.time(), self._alive_since())

    @staticmethod
    def _alive_since() -> float:
        return time.time() - 3 * HEARTBEAT_INTERVAL

    async def get_task(self, task_id: str) -> Task | None:
        """The stored task (status, attempts, error ...), or None if unknown."""
        await self.open()
        return await self.queue.get_task(task_id)

    async def get_result(self, task_id: str, timeout: float | None = None) -> Any:
        """Wait for the task to finish and return its value.

        :raises TaskFailedError: with the remote exception's type, message and traceback.
        :raises TaskCancelledError: the task was cancelled.
        :raises ResultTimeoutError: not finished within ``timeout`` seconds (the task is
            left alone).
        :raises TaskNotFoundError: no task has this id.
        """
        try:
            task = await self.wait_finished(task_id, timeout)
        except TaskNotFoundError:
            # Purged from the queue store (result_ttl), but perhaps kept in the result store.
            try:
                stored = await self.get_stored_result(task_id)
            except ValueError:  # an id the result store cannot name was never stored there
                stored = None
            if stored is None:
                raise
            return result_value(stored, self.queue.signer)
        return task_value(task, self.queue.signer)

    async def get_stored_result(self, task_id: str) -> TaskResult | None:
        """The task's record in the result store (None if there is none, or no such store
        is configured)."""
        await self.open()
        if self.result_storage is None:
            return None
        return await self.result_storage.get(task_id)

    async def wait_finished(self, task_id: str, timeout: float | None = None) -> Task:
        """Wait until the task is finished, whatever the outcome; return it (its payload
        left out, empty, where the store can spare reading it: SQLite, PostgreSQL).

        :raises ResultTimeoutError: not finished within ``timeout`` seconds.
        :raises TaskNotFoundError: no task has this id.
        """
        timeout = _wait_seconds(timeout)
        await self.open()
        outcomes = await self._read_outcomes([task_id])
        task = outcomes[0] if outcomes else None
        if task is None:
            raise TaskNotFoundError(f"no task with id {task_id!r} in {self._where()}")
        if task.status.is_terminal:
            return task
        finished: asyncio.Future[Task | None] = asyncio.get_running_loop().create_future()

        def on_finished(_: str, task: Task | ClientClosedError | None) -> None:
            if finished.done():
                return
            if isinstance(task, ClientClosedError):
                finished.set_exception(task)
            else:
                finished.set_result(task)

        self.watcher.watch(task_id, on_finished)
        try:
            found = await asyncio.wait_for(finished, timeout)
        except TimeoutError:
            self.watcher.unwatch(task_id, on_finished)
            current = await self.queue.get_task(task_id) or task
            raise ResultTimeoutError(await self.timeout_message(current, timeout)) from None
        if found is None:
            raise TaskNotFoundError(f"task {task_id} no longer exists in {self._where()}")
        return found

    def wait_in_thread(self, task_id: str, timeout: float | None) -> Task | None:
        """:meth:`wait_finished` in the calling thread (not the loop's), for the synchronous
        client: the task once finished, or as it stands when ``timeout`` runs out (not
        finished, then); None when it is missing or this path is unavailable, and the
        caller goes through :meth:`wait_finished`. Available when the store can read from
        any thread (SQLite) and a place is free in ``stored`` (8 threads at once).

        Each look is a read on the thread's own connection, made when a poke or a
        settlement concerns it (see :meth:`StoredSignal.wait_for`): an idle round trip's
        result arrives without two trips through the store's thread and this loop."""
        reader = self._thread_reader
        if not self._open or reader is None:
            return None
        return self.stored.wait_for(task_id, reader.get_blocking, _wait_seconds(timeout))

    async def timeout_message(self, task: Task, timeout: float | None) -> str:
        """The ResultTimeoutError message for ``task``, still unfinished after ``timeout``
        seconds: its state, and how to start a worker when none serves this store."""
        text = (
            f"task {task.id} ({task.func_name}) did not finish within {timeout:g}s: "
            f"it is {task.status.value} after {task.attempts} attempt(s)"
        )
        live = await self.storage.workers(time.time() - 3 * HEARTBEAT_INTERVAL)
        if not live:
            text += (
                f"; no worker is serving {self._where()}: start one with "
                f"`omniq-mp workers {self._store_flags()}`, "
                "or use `with OmniQ(...)` to run tasks in this process"
            )
        elif task.status is TaskStatus.PENDING and all(task.queue not in w.queues for w in live):
            served = sorted({name for w in live for name in w.queues})
            text += (
                f"; no live worker serves its queue {task.queue!r} (they serve "
                f"{', '.join(map(repr, served))}): start one with `--queues {task.queue}`"
            )
        return text

    def _store_flags(self) -> str:
        """The ``omniq-mp`` flags naming this client's queue (a password shown as ***)."""
        if self.settings.backend == "postgres":
            dsn = redact(self.settings.postgres_dsn)
            return f"--backend postgres --dsn '{dsn}' --schema {self.settings.postgres_schema}"
        return f"--backend {self.settings.backend} --base-dir {self.settings.base_dir}"

    def _where(self) -> str:
        if self.settings.backend == "postgres":
            return f"the postgres queue {redact(self.settings.postgres_dsn)}"
        return f"the {self.settings.backend} store at {self.settings.base_dir}"

    async def _log_duplicate(self, task: Task, existing_id: str) -> None:
        existing = await self.queue.get_task(existing_id)
        # Signatures differ per task id: compare the calls themselves.
        differs = existing is not None and not same_call(existing.payload, task.payload)
        logger.bind(task_id=existing_id, action="task_deduplicated").info(
            "key {!r} is held by unfinished task {}: not enqueued again{}",
            task.key,
            existing_id,
            " (this call's arguments differ and were dropped)" if differs else "",
        )

    async def cancel(self, task_id: str) -> bool:
        """Cancel a task wherever it is: a pending one never starts; a running one has its
        process killed (by whichever supervisor runs it) and is never retried.

        The id of any run of an ``interval=`` task stops the whole series: its run that
        is pending (or running) now is cancelled, so no further run is scheduled.

        :returns: True if this call cancelled the task or asked for it to be killed; False
            if it had already finished (cancelled included), so there was nothing to do.
        :raises TaskNotFoundError: no task has this id.
        """
        await self.open()
        task = await self.queue.get_task(task_id)
        if task is None:
            raise TaskNotFoundError(f"no task with id {task_id!r} in {self._where()}")
        for _ in range(_SERIES_HOPS):
            if task.status.is_terminal:
                current = await self._current_run(task)
                if current is None:
                    return False  # already finished, cancelled included: nothing to do
                task = current
            cancelled = await self.queue.cancel(task.id)
            if cancelled is None:  # purged meanwhile
                return False
            task = cancelled
            if task.status is TaskStatus.CANCELLED or task.cancel_requested:
                break
            # It finished just before the cancel reached it: an interval task's next run
            # may be pending now, so look again.
        else:
            return False
        if task.status is TaskStatus.RUNNING and self._workers is not None:
            self._workers.watch.cancel(task.id)  # ours: no need to wait for the watch
        if task.status is TaskStatus.CANCELLED and self.result_writer is not None:
            # Cancelled before it ran: no supervisor settles it, so copy its outcome here
            # (a running one is copied by the supervisor that stops it).
            self.result_writer.finished(task.id)
        return True

    async def _current_run(self, task: Task) -> Task | None:
        """The unfinished run of the interval series a finished ``task`` belongs to (its
        runs share their first run's key), or None."""
        if task.interval is None or task.key is None or task.status is TaskStatus.CANCELLED:
            return None
        holder = await self.storage.key_holder(task.key)
        current = await self.queue.get_task(holder) if holder is not None else None
        # A key is the user's to reuse once a series ends: only a run of this series counts.
        if current is None or current.interval is None or current.func_name != task.func_name:
            return None
        return current

    def cancel_soon(self, task_id: str) -> None:
        """:meth:`cancel` in the background, from a callback on this client's loop; a
        failure is logged."""

        async def cancel() -> None:
            try:
                await self.cancel(task_id)
            except Exception as exc:
                logger.bind(task_id=task_id).error("cancelling task {} failed: {}", task_id, exc)

        note = asyncio.get_running_loop().create_task(cancel())
        self._notes.add(note)  # held until done: the loop keeps only weak references
        note.add_done_callback(self._notes.discard)

    async def dead(self, limit: int = 100) -> list[Task]:
        """Quarantined tasks (DEAD), newest first, each with its attempts' ``history``."""
        check_int("limit", limit, minimum=1)
        await self.open()
        return await self.storage.list_tasks(TaskStatus.DEAD, None, limit)

    async def retry(self, task_ids: Sequence[str] | None = None) -> list[str]:
        """Re-queue the given DEAD or FAILED tasks (every DEAD one when None) with fresh
        budgets; returns the ids re-queued. One id may be given as a plain string.

        A task whose key another unfinished task holds is left as it is, as enqueue would
        refuse a second holder: a failed run of an ``interval=`` series, for one, whose
        next run holds the series' key (cancel the series first to re-run it)."""
        if isinstance(task_ids, str):  # not its characters, one by one
            task_ids = [task_ids]
        await self.open()
        return await self.storage.revive(task_ids, time.time())

    async def purge(
        self,
        older_than: timedelta | float | str,
        statuses: Sequence[TaskStatus | str] | str = (TaskStatus.COMPLETED, TaskStatus.FAILED),
    ) -> int:
        """Delete tasks in ``statuses`` that finished more than ``older_than`` ago
        (seconds, a timedelta, or text like ``"7d"``). Statuses are TaskStatus members or
        their names in any case (``"completed"``; one string may list several, comma
        separated, as the CLI's ``--status``).

        :raises ConfigError: a status a task does not end in, or a bad ``older_than``.
        """
        chosen = finished_statuses(statuses, "statuses")
        before = time.time() - parse_duration("older_than", older_than)
        await self.open()
        total = 0
        while (removed := await self.storage.purge_finished(before, chosen, 500)) > 0:
            total += removed
        return total

    async def stats(self, queues: Sequence[str] | None = None) -> QueueStats:
        """Task counts by status, in the named queues (all when None; one name may be
        given as a plain string)."""
        if isinstance(queues, str):  # not its characters, one by one
            queues = [queues]
        await self.open()
        return await self.queue.stats(queues)


def result_value(stored: TaskResult, signer: Signer | None = None) -> Any:
    """A result-store record's value, or the error it ended with raised (see
    :func:`task_value`)."""
    task = Task(
        id=stored.task_id,
        func_name="?",
        payload=b"",
        status=stored.status,
        result=stored.result,
        error=stored.error,
    )
    return task_value(task, signer)


def task_value(task: Task, signer: Signer | None = None) -> Any:
    """A finished task's value, or the error it ended with raised.

    :raises SignatureError: with a ``signer``, the result's signature does not check out
        (it is not unpickled).
    """
    if task.status is TaskStatus.COMPLETED:
        if task.result is None and signer is None:
            return None
        # With signing on, even a None value is signed bytes: a missing result was removed.
        return loads_result(task.result or b"", signer=signer, task_id=task.id)
    if task.status is TaskStatus.CANCELLED:
        raise TaskCancelledError(f"task {task.id} was cancelled")
    error = task.error
    if error is None:
        raise TaskFailedError(task.id, "UnknownError", "the task failed without an error record")
    if task.status is TaskStatus.DEAD:
        history = [str(e) for e in task.history]
        raise TaskDeadError(task.id, error.error_type, error.message, error.traceback, history)
    raise TaskFailedError(task.id, error.error_type, error.message, error.traceback)
