"""The one exception hierarchy of omniq_mp.

Every error the library raises on purpose derives from :class:`OmniqError`, so callers can
catch the library's failures without catching their own bugs.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "OmniqError",
    "ResultTimeoutError",
    "SerializationError",
    "SignatureError",
    "StorageError",
    "TaskCancelledError",
    "TaskDeadError",
    "TaskFailedError",
    "TaskNotFoundError",
]


class OmniqError(Exception):
    """Base class of every error omniq_mp raises on purpose."""


class ConfigError(OmniqError, ValueError):
    """A setting or option is invalid; the message names it and the accepted values."""


class SerializationError(OmniqError, ValueError):
    """A callable, argument or result cannot be carried between processes."""


class SignatureError(OmniqError):
    """A signed payload or result failed verification (or, with signing on, carries no
    signature), so it was not unpickled; the message gives the reason, never the key."""


class StorageError(OmniqError):
    """The task store cannot be opened, read or written."""


class StorageFullError(StorageError):
    """The store has no room for a write (disk full, file size limit, or SQLite's
    ``max_page_count``): the write was rolled back whole, nothing partial was stored."""


class StorageReadOnlyError(StorageError):
    """The store refuses writes (a read-only file, folder or mount); nothing was stored."""


class ResultTooLarge(OmniqError):
    """A task's pickled result is over ``max_result_size``; the worker did not send it.
    Raised in the worker, and stored as the task's error (it is not retried)."""


class WorkerStartError(OmniqError, RuntimeError):
    """A worker process did not come up: its ``worker_init`` raised or outlasted
    ``worker_init_timeout``, or the process died while starting; the message says which."""


class ClientClosedError(OmniqError, RuntimeError):
    """A call on a client after its ``close()`` (or the end of its ``with`` block)."""


class TaskNotFoundError(OmniqError, KeyError):
    """No task with this id exists in the store."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "no such task"


class ResultTimeoutError(OmniqError, TimeoutError):
    """``get_result`` waited its whole timeout and the task has not finished."""


class TaskCancelledError(OmniqError):
    """The task was cancelled before it produced a result."""


class RemoteTraceback(Exception):
    """Carries the traceback text of an exception raised in a worker process.

    Attached as ``__cause__`` of :class:`TaskFailedError`, so an uncaught failure prints the
    worker's traceback above the local one.
    """

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'


class TaskFailedError(OmniqError):
    """The task ended in failure; carries the remote exception's type, message and traceback.

    :param task_id: the failed task.
    :param error_type: the remote exception's class name, or the failure kind
        (``TimeoutError``, ``WorkerCrashed``, ...).
    :param message: the remote exception's message.
    :param traceback: the traceback text from the worker, when there is one.
    """

    def __init__(self, task_id: str, error_type: str, message: str, traceback: str = "") -> None:
        super().__init__(f"task {task_id} failed: {error_type}: {message}")
        self.task_id = task_id
        self.error_type = error_type
        self.message = message
        self.traceback = traceback
        if traceback:
            self.__cause__ = RemoteTraceback(traceback)


class TaskDeadError(TaskFailedError):
    """The task was quarantined (DEAD): its process died on every start its crash budget
    allowed. ``history`` lists each attempt's error as ``Type: message`` lines."""

    def __init__(
        self, task_id: str, error_type: str, message: str, traceback: str, history: list[str]
    ) -> None:
        super().__init__(task_id, error_type, message, traceback)
        self.history = history
