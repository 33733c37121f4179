"""omniq_mp: a durable, multiprocess, CPU-oriented task queue.

from omniq_mp import OmniQ
with OmniQ() as q:
    task_id = q.enqueue(lambda x: x * 2, 21)
    assert q.get_result(task_id, timeout=10) == 42
"""

from __future__ import annotations

from loguru import logger

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

# A library stays quiet until the application asks for its logs (omniq_mp.logging.configure).
logger.disable("omniq_mp")

__version__ = "0.1.0"

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
