"""omniq_mp: a durable, multiprocess, CPU-oriented task queue.

from omniq_mp import OmniQ
with OmniQ() as q:
    task_id = q.enqueue(lambda x: x * 2, 21)
    assert q.get_result(task_id, timeout=10) == 42
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from loguru import logger

from omniq_mp.lazy_names import lazy_attributes

# A library stays quiet until the application asks for its logs (omniq_mp.logging.configure).
logger.disable("omniq_mp")

__version__ = "0.1.0"

# Each public name and the module that defines it, imported on first use (PEP 562). A
# worker process imports omniq_mp.child, and so this package, but none of the client,
# supervisor and storage modules: importing them all made its forkserver start 0.3 s
# later and each worker hold more private memory (4.38 against 4.03 MiB idle).
_EXPORTS = {
    "AsyncOmniQ": "omniq_mp.core",
    "AsyncTaskQueue": "omniq_mp.queue",
    "AsyncWorkerPool": "omniq_mp.worker",
    "ClientClosedError": "omniq_mp.errors",
    "ConfigError": "omniq_mp.errors",
    "LargePayloadWarning": "omniq_mp.payload_size",
    "OmniQ": "omniq_mp.sync",
    "OmniQConfig": "omniq_mp.config",
    "OmniQExecutor": "omniq_mp.executor",
    "OmniqError": "omniq_mp.errors",
    "ResultTimeoutError": "omniq_mp.errors",
    "ResultTooLarge": "omniq_mp.errors",
    "SerializationError": "omniq_mp.errors",
    "Settings": "omniq_mp.config",
    "SignatureError": "omniq_mp.errors",
    "StorageError": "omniq_mp.errors",
    "StorageFullError": "omniq_mp.errors",
    "StorageReadOnlyError": "omniq_mp.errors",
    "Task": "omniq_mp.models",
    "TaskCancelledError": "omniq_mp.errors",
    "TaskDeadError": "omniq_mp.errors",
    "TaskError": "omniq_mp.models",
    "TaskFailedError": "omniq_mp.errors",
    "TaskFunction": "omniq_mp.decorator",
    "TaskFuture": "omniq_mp.futures",
    "TaskHandle": "omniq_mp.futures",
    "TaskNotFoundError": "omniq_mp.errors",
    "TaskStatus": "omniq_mp.models",
    "VersionSkewError": "omniq_mp.envelope",
}


__getattr__ = lazy_attributes(globals(), _EXPORTS)


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


if TYPE_CHECKING:  # what type checkers and editors see: the same names, imported
    from omniq_mp.config import OmniQConfig, Settings
    from omniq_mp.core import AsyncOmniQ
    from omniq_mp.decorator import TaskFunction
    from omniq_mp.envelope import VersionSkewError
    from omniq_mp.errors import (
        ClientClosedError,
        ConfigError,
        OmniqError,
        ResultTimeoutError,
        ResultTooLarge,
        SerializationError,
        SignatureError,
        StorageError,
        StorageFullError,
        StorageReadOnlyError,
        TaskCancelledError,
        TaskDeadError,
        TaskFailedError,
        TaskNotFoundError,
    )
    from omniq_mp.executor import OmniQExecutor
    from omniq_mp.futures import TaskFuture, TaskHandle
    from omniq_mp.models import Task, TaskError, TaskStatus
    from omniq_mp.payload_size import LargePayloadWarning
    from omniq_mp.queue import AsyncTaskQueue
    from omniq_mp.sync import OmniQ
    from omniq_mp.worker import AsyncWorkerPool

__all__ = [
    "AsyncOmniQ",
    "AsyncTaskQueue",
    "AsyncWorkerPool",
    "ClientClosedError",
    "ConfigError",
    "LargePayloadWarning",
    "OmniQ",
    "OmniQConfig",
    "OmniQExecutor",
    "OmniqError",
    "ResultTimeoutError",
    "ResultTooLarge",
    "SerializationError",
    "Settings",
    "SignatureError",
    "StorageError",
    "StorageFullError",
    "StorageReadOnlyError",
    "Task",
    "TaskCancelledError",
    "TaskDeadError",
    "TaskError",
    "TaskFailedError",
    "TaskFunction",
    "TaskFuture",
    "TaskHandle",
    "TaskNotFoundError",
    "TaskStatus",
    "VersionSkewError",
    "__version__",
]
