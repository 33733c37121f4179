"""Task and worker events: recorded in batches, stored, read back, followed live.

    supervisor / producer ──emit()──> EventRecorder ──batches──> EventStorage
                                     (bounded queue; never blocks, never raises)
    get_events(task_id) / follow(after=position) / AsyncEventProcessor <── EventStorage

A follower keeps the position of the last event it handled; asking for what comes after
it is how a restarted follower resumes without gaps or repeats.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any

from loguru import logger

from omniq_mp.eventstore import (
    Event,
    EventStorage,
    EventType,
    FileEventStorage,
    MemoryEventStorage,
    NATSEventStorage,
    PostgreSQLEventStorage,
    RedisEventStorage,
    SQLiteEventStorage,
    StoredEvent,
)
from omniq_mp.eventstore.base import task_event
from omniq_mp.inbox import Inbox
from omniq_mp.models import ErrorKind, Settlement, Task, TaskStatus
from omniq_mp.retrying import OutageWriter

__all__ = [
    "AsyncEventProcessor",
    "Event",
    "EventRecorder",
    "EventStorage",
    "EventType",
    "FileEventStorage",
    "MemoryEventStorage",
    "NATSEventStorage",
    "PostgreSQLEventStorage",
    "RedisEventStorage",
    "SQLiteEventStorage",
    "StoredEvent",
    "TaskEvent",
    "WorkerEvent",
    "follow",
]

# The names the reference documents use. One record type serves both: a worker event has
# no task_id, and carries hostname, pid, queues, active, processed, uptime and per-child
# pid/task/RSS/CPU in its details.
TaskEvent = Event
WorkerEvent = Event
_BATCH = 500
_LINGER = 0.05  # seconds an event may wait to share a write with the next ones
Handler = Callable[[Event], Awaitable[None] | None]


_STOP_PATIENCE = 5.0  # seconds stop() keeps retrying an unreachable store


class EventRecorder:
    """Writes emitted events to storage from a background task, in batches.

    ``emit`` only appends to a bounded in-memory queue, so recording can never slow the
    dispatch path; a failing store is logged and counted, never raised into the caller.

    :param storage: where events go.
    :param capacity: events held while the store is slow; past it, new ones are dropped
        (counted in ``dropped``).
    """

    def __init__(self, storage: EventStorage, capacity: int = 100_000) -> None:
        self.storage = storage
        self.capacity = capacity
        self.dropped = 0
        self._queue: Inbox[Event | None] = Inbox()  # None: stop; bounded by emit
        self._writer: asyncio.Task[None] | None = None
        self._outages = OutageWriter("event store")
        self._give_up_at: float | None = None  # set by stop(): an outage must not hang it
        # Events emitted by other threads, taken into the queue by the loop (see
        # emit_from_thread); _lock guards the list, the only state two threads share.
        self._foreign: list[Event] = []
        self._lock = threading.Lock()

    @property
    def failures(self) -> int:
        """Failed write attempts so far (each retried)."""
        return self._outages.failures

    def start(self) -> None:
        """Start the background writer (idempotent)."""
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_loop(), name="omniq-events")

    def emit(self, event: Event) -> None:
        """Queue an event for writing."""
        if self._queue.qsize() < self.capacity:
            self._queue.put_nowait(event)
        else:
            if self.dropped == 0 or self.dropped % 10_000 == 0:
                logger.bind(action="events_dropped").error(
                    "event store unreachable and {} events buffered: dropping new events "
                    "(tasks and results are unaffected)",
                    self.capacity,
                )
            self.dropped += 1

    def emit_many(self, events: Sequence[Event]) -> None:
        """Queue several events for writing (from the loop's thread)."""
        for event in events:
            self.emit(event)

    def emit_from_thread(self, events: Sequence[Event], loop: asyncio.AbstractEventLoop) -> None:
        """Queue events from a thread other than ``loop``'s. The loop is woken once per
        linger period, not once per call: a script enqueueing in a tight loop must not
        pay a thread switch per task for its events."""
        with self._lock:
            first = not self._foreign
            self._foreign.extend(events)
        if first:
            loop.call_soon_threadsafe(loop.call_later, _LINGER, self._take_foreign)

    def _take_foreign(self) -> None:
        with self._lock:
            events, self._foreign = self._foreign, []
        self.emit_many(events)

    async def _write_loop(self) -> None:
        stopping = False
        while not stopping:
            batch: list[Event] = []
            item = await self._queue.get()
            if item is not None and self._queue.qsize() < _BATCH:
                # Linger briefly so one write carries many events: a commit per event
                # would compete with the supervisor for its one core. Not while a full
                # batch waits: a linger per batch capped the writer at 500 events per
                # 50 ms, below what a drain emits (two per task), and the backlog grew
                # toward the capacity, past which events are dropped.
                await asyncio.sleep(_LINGER)
            while True:
                if item is None:
                    stopping = True  # write what came before the stop mark, then end
                    break
                batch.append(item)
                if self._queue.empty() or len(batch) >= _BATCH:
                    break
                item = self._queue.get_nowait()
            if batch:
                await self._write(batch)

    async def _write(self, batch: list[Event]) -> None:
        # While the store is down the batch waits here and later events fill the bounded
        # queue behind it; a write that partly landed before failing may repeat some events.
        stored = await self._outages.write(
            lambda: self.storage.append(batch), self._giving_up, self._is_stopping
        )
        if not stored:
            self.dropped += len(batch)
            logger.bind(action="events_dropped").error(
                "{} events not stored: the event store stayed unreachable", len(batch)
            )

    def _is_stopping(self) -> bool:
        return self._give_up_at is not None

    def _giving_up(self) -> bool:
        loop = asyncio.get_running_loop()
        return self._give_up_at is not None and loop.time() >= self._give_up_at

    async def flush(self) -> None:
        """Write everything emitted so far (stops and restarts the writer)."""
        await self.stop()
        self.start()

    async def stop(self) -> None:
        """Write everything queued, then stop the writer. Nothing emitted before the call
        is lost; the writer is never cancelled in the middle of a write."""
        writer, self._writer = self._writer, None
        if writer is None:
            return
        self._give_up_at = asyncio.get_running_loop().time() + _STOP_PATIENCE
        self._take_foreign()  # emitted by other threads before this call: not lost
        try:
            self._queue.put_nowait(None)
            await writer
        finally:
            self._give_up_at = None


async def follow(
    storage: EventStorage,
    after: int = 0,
    *,
    task_id: str | None = None,
    types: Sequence[EventType] | None = None,
    poll_interval: float = 0.1,
    live: bool = True,
) -> AsyncIterator[StoredEvent]:
    """Yield stored events after position ``after``; with ``live``, keep waiting for new
    ones (from this process or any other writing the same store)."""
    position = after
    while True:
        batch = await storage.read(position, _BATCH, task_id=task_id, types=types)
        for stored in batch:
            position = stored.position
            yield stored
        if len(batch) < _BATCH:
            if not live:
                return
            await asyncio.sleep(poll_interval)


class AsyncEventProcessor:
    """Calls registered handlers for every new event, live.

    :param storage: an event store, or build one from ``event_storage_type`` ("sqlite",
        "file" or "memory") and ``event_storage_path``.
    :param after: position to resume after (0: from the beginning); :attr:`position` holds
        the last event handled, to save and pass back after a restart.
    """

    def __init__(
        self,
        storage: EventStorage | None = None,
        *,
        event_storage_type: str | None = None,
        event_storage_path: str | None = None,
        after: int = 0,
        poll_interval: float = 0.1,
    ) -> None:
        # A store we open ourselves we also close when start() returns (an open aiosqlite
        # connection would keep the interpreter from exiting).
        self._owns_storage = storage is None
        if storage is None:
            from omniq_mp.eventstore import open_event_storage_at

            storage = open_event_storage_at(event_storage_type or "sqlite", event_storage_path)
        self.storage = storage
        self.position = after
        self.poll_interval = poll_interval
        self.handler_errors = 0
        self.current: StoredEvent | None = None  # the event being handled, with its position
        self._handlers: list[Handler] = []
        self._stopping = False

    def register_handler(self, handler: Handler) -> None:
        """Add a function (plain or async) called with each :class:`Event`."""
        self._handlers.append(handler)

    def stopping(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._stopping

    def stop(self) -> None:
        """Make :meth:`start` return after the event in hand."""
        self._stopping = True

    async def start(self) -> None:
        """Follow the store and dispatch events until :meth:`stop` (which takes effect
        after the event in hand, or at once while waiting for new events)."""
        await self.storage.open()
        self._stopping = False
        try:
            await self._follow()
        finally:
            if self._owns_storage:
                await self.storage.close()

    async def _follow(self) -> None:
        while not self.stopping():
            batch = await self.storage.read(self.position, _BATCH)
            for stored in batch:
                self.current = stored
                for handler in self._handlers:
                    await self._call(handler, stored)
                self.position = stored.position
                if self.stopping():  # a handler may have called stop()
                    return
            if len(batch) < _BATCH:
                await asyncio.sleep(self.poll_interval)

    async def _call(self, handler: Handler, stored: StoredEvent) -> None:
        try:
            result = handler(stored.event)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:  # one bad handler must not stop the stream
            self.handler_errors += 1
            logger.bind(action="event_handler_failed").error(
                "event handler {!r} failed on event {}: {!r}", handler, stored.position, exc
            )


class SupervisorEvents:
    """What a supervisor reports, as events, to its recorder and to in-process listeners
    (metrics). With neither, every method is a cheap no-op.

    :param recorder: where events are stored (None: not stored).
    :param worker_id: the supervisor's id, stamped on every event.
    """

    def __init__(self, recorder: EventRecorder | None, worker_id: str) -> None:
        self.recorder = recorder
        self.worker_id = worker_id
        self.listeners: list[Callable[[Event], None]] = []

    def _emit(self, event: Event) -> None:
        if self.recorder is not None:
            self.recorder.emit(event)
        for listener in self.listeners:
            try:
                listener(event)
            except Exception as exc:  # a listener must never break the supervisor
                logger.bind(action="event_listener_failed").warning("listener failed: {}", exc)

    def worker(self, kind: EventType, **details: Any) -> None:
        """WORKER_ONLINE / WORKER_HEARTBEAT / WORKER_OFFLINE with counters in details."""
        self._emit(Event(kind, worker_id=self.worker_id, details=details))

    def started(self, task: Task, pid: int) -> None:
        """The worker process acknowledged ``task``."""
        self._emit(started_event(task, self.worker_id, pid))

    def settled(self, task: Task, settlement: Settlement, duration: float | None = None) -> None:
        """Events of an attempt whose outcome was stored."""
        for event in settled_events(task, settlement, self.worker_id, duration):
            self._emit(event)

    def storing_failed(self, task: Task, error: str) -> None:
        """An outcome could not be stored (it is kept and retried)."""
        self._emit(
            _task_event(
                EventType.ERROR_STORING_RESULT,
                task,
                worker_id=self.worker_id,
                details={"error": error},
            )
        )

    def enqueued_by_schedule(self, task_ids: Sequence[str]) -> None:
        """Tasks a cron schedule created."""
        for task_id in task_ids:
            self._emit(
                Event(
                    EventType.ENQUEUED,
                    task_id,
                    worker_id=self.worker_id,
                    details={"by": "schedule"},
                )
            )


# -- building events from what the queue decided ---------------------------------------------


def _task_event(
    kind: EventType,
    task: Task,
    *,
    timestamp: float | None = None,
    worker_id: str | None = None,
    duration: float | None = None,
    details: Mapping[str, Any] | None = None,
) -> Event:
    return task_event(
        kind,
        task.id,
        time.time() if timestamp is None else timestamp,
        worker_id,
        task.func_name,
        task.queue,
        task.attempts or None,
        duration,
        {} if details is None else details,
    )


def enqueued_events(task: Task, now: float) -> list[Event]:
    """ENQUEUED, then SCHEDULED when the task is not due yet, both stamped ``now``: the
    time the enqueue began, before the task could be claimed (so before its STARTED)."""
    events = [
        _task_event(EventType.ENQUEUED, task, timestamp=now, details={"priority": task.priority})
    ]
    if task.eta > now:
        events.append(
            _task_event(EventType.SCHEDULED, task, timestamp=now, details={"eta": task.eta})
        )
    return events


def started_event(task: Task, worker_id: str, pid: int) -> Event:
    """STARTED: the worker process acknowledged the task."""
    return _task_event(EventType.STARTED, task, worker_id=worker_id, details={"pid": pid})


_FINAL = {
    TaskStatus.COMPLETED: EventType.COMPLETED,
    TaskStatus.CANCELLED: EventType.CANCELLED,
    TaskStatus.DEAD: EventType.DEAD,
}


def settled_events(
    task: Task, settlement: Settlement, worker_id: str, duration: float | None
) -> list[Event]:
    """The events one settled attempt produces, in order: COMPLETED; or FAILED/TIMED_OUT
    (with ``will_retry``), then RETRIED and SCHEDULED when it runs again; or CANCELLED; or
    DEAD. A task handed back unstarted (shutdown) produces none."""
    common: dict[str, Any] = {"worker_id": worker_id, "duration": duration}
    if settlement.status in _FINAL:
        final = {} if settlement.error is None else {"error": str(settlement.error)}
        return [_task_event(_FINAL[settlement.status], task, details=final, **common)]
    if settlement.error is None:  # released uncharged: nothing happened to the task
        return []
    retry = settlement.status is TaskStatus.PENDING
    kind = (
        EventType.TIMED_OUT
        if settlement.error.kind == ErrorKind.TIMEOUT.value
        else EventType.FAILED
    )
    details: dict[str, Any] = {"error": str(settlement.error), "will_retry": retry}
    events = [_task_event(kind, task, details=details, **common)]
    if retry:
        events.append(_task_event(EventType.RETRIED, task, worker_id=worker_id))
        events.append(_task_event(EventType.SCHEDULED, task, details={"eta": settlement.eta}))
    return events
