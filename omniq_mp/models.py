"""Plain-data models shared by the producer, the supervisor and every storage backend.

Nothing here holds user objects: callables, arguments and results travel as opaque
cloudpickle bytes (``Task.payload``, ``Task.result``), so the supervisor can store and move
them without ever unpickling user code.
"""

from __future__ import annotations

import enum
import os
import time
import traceback as _traceback
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

__all__ = [
    "ErrorKind",
    "Outcome",
    "OutcomeKind",
    "Settlement",
    "Task",
    "TaskError",
    "TaskStatus",
    "create_task",
    "get_error_message",
    "has_error",
    "is_failed",
    "new_id",
]


class TaskStatus(enum.StrEnum):
    """Where a task is in its life. PENDING covers both due and scheduled (future ``eta``)."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    DEAD = "DEAD"  # quarantined: its process died on every allowed start (poison task)

    @property
    def is_terminal(self) -> bool:
        """True for statuses a task never leaves."""
        return self in _TERMINAL


_TERMINAL = frozenset(
    {TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.DEAD}
)


_FINISHED_NAMES = ", ".join(s.value.lower() for s in TaskStatus if s.is_terminal)


def finished_statuses(values: Iterable[TaskStatus | str] | str, what: str) -> list[TaskStatus]:
    """``values`` as statuses a task ends in: TaskStatus members or their names in any
    case, or one string listing them comma separated (``"completed,failed"``).

    :raises ConfigError: any other value, or none at all (which would purge nothing and
        say so as if it had worked); the message names ``what`` and the choices.
    """
    from omniq_mp.errors import ConfigError  # errors stays free of model imports

    if isinstance(values, str):
        values = [part for part in values.split(",") if part.strip()]
    chosen = [_finished_status(value, what) for value in values]
    if not chosen:
        raise ConfigError(f"{what}: give at least one of {_FINISHED_NAMES}")
    return chosen


def _finished_status(value: TaskStatus | str, what: str) -> TaskStatus:
    """``value`` (a TaskStatus, or its name in any case) as a status a task ends in.

    :raises ConfigError: anything else; the message names ``what`` and the choices.
    """
    from omniq_mp.errors import ConfigError  # errors stays free of model imports

    try:
        status = TaskStatus(value.strip().upper() if isinstance(value, str) else value)
    except ValueError:
        status = TaskStatus.PENDING  # refused below, with the same message
    if not status.is_terminal:
        raise ConfigError(f"{what} takes finished statuses ({_FINISHED_NAMES}), got {value!r}")
    return status


class ErrorKind(enum.StrEnum):
    """Why an attempt failed; decides whether a retry can help."""

    EXCEPTION = "exception"  # the task raised
    TIMEOUT = "timeout"  # the supervisor killed it at its deadline
    CRASH = "crash"  # its process died on its own (segfault, os._exit, OOM kill)
    LOST = "lost"  # its lease expired: the supervisor that held it died
    MEMORY = "memory"  # killed for exceeding its memory limit
    CANCELLED = "cancelled"  # killed because a user cancelled it
    IMPORT = "import"  # a dotted path that does not import: retrying cannot help
    SERIALIZATION = "serialization"  # payload or result could not cross a process boundary


_NOT_RETRYABLE = frozenset({ErrorKind.IMPORT, ErrorKind.SERIALIZATION})


@dataclass(frozen=True)
class TaskError:
    """What went wrong in one attempt, as plain data.

    :param error_type: the exception class name (``ZeroDivisionError``) or a failure name
        (``TimeoutError``, ``WorkerCrashed``, ``WorkerLost``).
    :param message: a human-readable message.
    :param traceback: traceback text from the worker process, if any.
    :param is_retryable: False when running the task again cannot help.
    :param retry_count: how many retries had been made when this error happened.
    :param max_retries: the task's retry budget, so :meth:`can_retry` needs nothing else.
    :param kind: the :class:`ErrorKind` value.
    """

    error_type: str
    message: str
    traceback: str = ""
    is_retryable: bool = True
    retry_count: int = 0
    max_retries: int = 3
    kind: str = ErrorKind.EXCEPTION.value

    @classmethod
    def from_exception(
        cls,
        exception: BaseException,
        error_type: str | None = None,
        is_retryable: bool = True,
        retry_count: int = 0,
        max_retries: int = 3,
        kind: ErrorKind = ErrorKind.EXCEPTION,
    ) -> TaskError:
        """Build an error from a caught exception, keeping its traceback text."""
        tb = "".join(_traceback.format_exception(exception))
        return cls(
            error_type=error_type or type(exception).__name__,
            message=_safe_str(exception),
            traceback=tb,
            is_retryable=is_retryable and ErrorKind(kind) not in _NOT_RETRYABLE,
            retry_count=retry_count,
            max_retries=max_retries,
            kind=ErrorKind(kind).value,
        )

    def can_retry(self) -> bool:
        """True while the error is retryable and the retry budget is not spent."""
        return self.is_retryable and self.retry_count < self.max_retries

    def increment_retry(self) -> TaskError:
        """The same error, counted as one more retry."""
        return replace(self, retry_count=self.retry_count + 1)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form, for JSON columns and files."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskError:
        """Inverse of :meth:`to_dict`; ignores unknown keys written by newer versions.

        :raises TypeError: ``data`` is not a mapping, or a field has the wrong type (stored
            errors are read back from JSON that may have been damaged).
        """
        if not isinstance(data, Mapping):
            raise TypeError(f"a task error must be a JSON object, not {type(data).__name__}")
        values = {k: v for k, v in data.items() if k in _ERROR_FIELD_TYPES}
        for name, value in values.items():
            wanted = _ERROR_FIELD_TYPES[name]
            # bool is an int to isinstance: a flag where a count belongs is damage too.
            if not isinstance(value, wanted) or (wanted is int and isinstance(value, bool)):
                raise TypeError(f"task error field {name} is {type(value).__name__}")
        return cls(**values)

    def __str__(self) -> str:
        return f"{self.error_type}: {self.message}"


# The JSON type of each TaskError field, for from_dict's checks; derived from the
# (postponed, so textual) annotations, so a new field cannot be forgotten here.
_ERROR_FIELD_TYPES: dict[str, type] = {
    f.name: {"str": str, "bool": bool, "int": int}[str(f.type)] for f in fields(TaskError)
}


def _safe_str(exception: BaseException) -> str:
    # A user exception's __str__ may itself raise; the failure must still be recorded.
    try:
        return str(exception)
    except Exception:
        return f"<{type(exception).__name__} whose str() raised>"


def first_later_eta(tasks: Iterable[Task], now: float) -> float | None:
    """The earliest ETA after ``now`` among ``tasks`` (None if none is later): what a
    producer tells supervisors, so they claim at that time rather than at their next
    idle poll."""
    later = [task.eta for task in tasks if task.eta > now]
    return min(later) if later else None


def new_id() -> str:
    """A fresh task id: 32 hex digits, sorting by creation time."""
    # 48 bits of epoch milliseconds, then 80 random bits, as 32 hex digits (a UUIDv7's
    # layout without its version bits). Ids made close in time sort close together, so an
    # enqueue adds to the end of a store's id index instead of to a random page of it:
    # at 100,000 stored tasks that nearly doubles SQLite's batched insert rate. 80 random
    # bits keep ids unguessable and distinct across processes.
    return f"{time.time_ns() // 1_000_000:012x}{_random_part()}"


_RANDOM_HEX = 20  # digits: 80 bits
_RANDOM_BLOCK = 256  # random parts drawn per read of os.urandom
_random_parts: Iterator[str] = iter(())


def _random_part() -> str:
    # os.urandom lets go of the GIL; called once per id it would hand the GIL to the
    # store's thread at every task a producer builds, and wait up to the switch interval
    # (5 ms) to get it back. Reading a block at a time makes that once per 256 ids.
    # next() on a list iterator is atomic, so threads never share a part; a thread that
    # refills concurrently just draws its own block.
    global _random_parts
    try:
        return next(_random_parts)
    except StopIteration:
        block = os.urandom(_RANDOM_HEX // 2 * _RANDOM_BLOCK).hex()
        _random_parts = iter(
            [block[i : i + _RANDOM_HEX] for i in range(0, len(block), _RANDOM_HEX)]
        )
        return next(_random_parts)


def _forget_random_parts() -> None:
    # A forked child must not hand out the parts its parent still holds.
    global _random_parts
    _random_parts = iter(())


os.register_at_fork(after_in_child=_forget_random_parts)


@dataclass
class Task:
    """One stored task. Times are wall-clock epoch seconds.

    Supports ``task["error"]`` and ``task.get("error")`` as well as attribute access, so
    code written against dict-shaped tasks keeps working.
    """

    func_name: str
    payload: bytes
    id: str = field(default_factory=new_id)
    queue: str = "default"
    priority: int = 0
    status: TaskStatus = TaskStatus.PENDING
    eta: float = field(default_factory=time.time)
    interval: float | None = None
    timeout: float | None = None
    max_retries: int = 3
    attempts: int = 0
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    lease_token: str | None = None
    lease_until: float | None = None
    worker_id: str | None = None
    result: bytes | None = None
    error: TaskError | None = None
    key: str | None = None  # unique key: one unfinished task per key
    max_memory: int | None = None  # bytes of RSS the task's process may use
    result_ttl: float | None = None  # seconds the finished record is kept
    expires_at: float | None = None  # when the finished record may be purged
    cancel_requested: bool = False  # set on a RUNNING task; its supervisor kills it
    crashes: int = 0  # starts whose process died (segfault, OOM, memory limit, lost)
    history: tuple[TaskError, ...] = ()  # every failed attempt's error, oldest first

    def get(self, key: str, default: Any = None) -> Any:
        """Dict-style read of a field; ``default`` when the field is unknown or None."""
        value = getattr(self, key, None)
        return default if value is None else value

    def __getitem__(self, key: str) -> Any:
        if key not in {f.name for f in fields(self)}:
            raise KeyError(key)
        return getattr(self, key)

    def rerun(self, eta: float, now: float) -> Task:
        """A fresh task (new id, no attempts, no history) making the same call with the
        same options, due at ``eta``: the next run of an interval or cron task."""
        return Task(
            func_name=self.func_name,
            payload=self.payload,
            queue=self.queue,
            priority=self.priority,
            eta=eta,
            interval=self.interval,
            timeout=self.timeout,
            max_retries=self.max_retries,
            created_at=now,
            key=self.key,
            max_memory=self.max_memory,
            result_ttl=self.result_ttl,
        )

    @property
    def retries(self) -> int:
        """Retries made so far: executions started beyond the first."""
        return max(0, self.attempts - 1)


@dataclass(frozen=True)
class Settlement:
    """One write that ends an attempt, fenced by the lease token the attempt was claimed with.

    ``status`` PENDING means "run again at ``eta``"; ``uncharge`` gives the attempt back (a
    task interrupted by shutdown was not at fault). ``crashed`` counts the attempt against
    the crash budget. ``error`` is also appended to the task's history. ``follow_up`` is a
    task to insert in the same transaction (the next run of an interval task). Whatever
    the status, a task whose cancellation was requested ends CANCELLED.
    """

    task_id: str
    lease_token: str
    status: TaskStatus
    result: bytes | None = None
    error: TaskError | None = None
    eta: float | None = None
    uncharge: bool = False
    finished_at: float | None = None
    follow_up: Task | None = None
    crashed: bool = False


class OutcomeKind(enum.StrEnum):
    """How one attempt ended, as seen by the supervisor."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"  # the task raised, or its payload/result could not cross processes
    TIMED_OUT = "timed_out"  # killed at its deadline
    CRASHED = "crashed"  # its process died on its own
    ABORTED = "aborted"  # the supervisor stopped it (shutdown, lost lease): not the task's fault
    # Sent ahead to a worker that ended before starting it: it never ran, and is run again
    # elsewhere under the same claim (the pool's caller never stores this outcome).
    NOT_STARTED = "not_started"


@dataclass(frozen=True)
class Outcome:
    """One attempt's result, passed from the pool to the queue as a value, never raised."""

    kind: OutcomeKind
    result: bytes | None = None
    error: TaskError | None = None
    duration: float = 0.0
    pid: int | None = None

    @property
    def ok(self) -> bool:
        """True when the task returned a value."""
        return self.kind is OutcomeKind.SUCCEEDED


def create_task(func_path: str, payload: bytes | None = None, **options: Any) -> Task:
    """Build a :class:`Task` for a dotted-path function; options are Task fields."""
    from omniq_mp.serialization import dumps_call

    body = payload if payload is not None else dumps_call(func_path, (), {})
    return Task(func_name=func_path, payload=body, **options)


def has_error(task: Task | None) -> bool:
    """True when the task records an error from any attempt."""
    return task is not None and task.error is not None


def is_failed(task: Task | None) -> bool:
    """True when the task ended in failure."""
    return task is not None and task.status is TaskStatus.FAILED


def get_error_message(task: Task | None) -> str | None:
    """The task's last error as ``Type: message``, or None."""
    if task is None or task.error is None:
        return None
    return str(task.error)
