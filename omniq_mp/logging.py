"""Loguru logging with correlation ids, configured by code or ``OMNIQ_LOG_*`` variables.

The library is silent until :func:`configure` is called (the CLI calls it). Log records
carry ``task_id``, ``worker``, ``pid`` and a stable ``action`` name (``task_enqueued``,
``task_started``, ``task_failed`` ...) as extra fields; ``correlation_id`` is the task id.

    OMNIQ_LOG_LEVEL      DEBUG, INFO (default), WARNING, ERROR, CRITICAL
    OMNIQ_LOG_MODE       DEV (coloured console, default) or PROD (JSON lines)
    OMNIQ_LOG_FILE       PROD: also write here (default logs/omniq.log)
    OMNIQ_LOG_ROTATION   PROD: rotate the file at this size (default "100 MB")
    OMNIQ_LOG_RETENTION  PROD: keep rotated files this long (default "30 days")
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from loguru import logger

from omniq_mp.errors import ConfigError

if TYPE_CHECKING:
    from loguru import Logger

__all__ = [
    "bind_task",
    "configure",
    "get_logger",
    "log_serialization_error",
    "log_storage_error",
    "log_task_completed",
    "log_task_enqueued",
    "log_task_failed",
    "log_task_started",
    "log_worker_started",
    "log_worker_stopped",
    "task_context",
]

LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")
_DEV_FORMAT = (
    "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> | <level>{level: <8}</level> | "
    "<cyan>{name}</cyan> | {message}{extra[context]}"
)


def _context_suffix(record: Any) -> None:
    # Render the bound fields once, so the DEV format shows task_id, worker and action.
    extra = {k: v for k, v in record["extra"].items() if k != "context"}
    record["extra"]["context"] = (
        "  [" + " ".join(f"{k}={v}" for k, v in extra.items()) + "]" if extra else ""
    )


def configure(
    level: str | None = None,
    mode: str | None = None,
    log_file: str | None = None,
    rotation: str | None = None,
    retention: str | None = None,
) -> None:
    """Enable omniq_mp's logs; arguments win over ``OMNIQ_LOG_*`` variables.

    :param level: minimum level.
    :param mode: ``DEV`` (readable, coloured, stderr) or ``PROD`` (JSON lines on stderr
        and in ``log_file``, rotated and retained).
    """
    level = (level or os.environ.get("OMNIQ_LOG_LEVEL") or "INFO").upper()
    mode = (mode or os.environ.get("OMNIQ_LOG_MODE") or "DEV").upper()
    if level not in LEVELS:
        raise ConfigError(f"log level must be one of {', '.join(LEVELS)}; got {level!r}")
    if mode not in ("DEV", "PROD"):
        raise ConfigError(f"log mode must be DEV or PROD; got {mode!r}")
    logger.remove()
    logger.configure(patcher=_context_suffix)
    # diagnose=False: loguru would otherwise print the local variables of every frame in
    # a traceback, and those can hold secrets (a signing key, a DSN's password).
    if mode == "DEV":
        logger.add(sys.stderr, level=level, format=_DEV_FORMAT, colorize=None, diagnose=False)
    else:
        logger.add(sys.stderr, level=level, serialize=True, diagnose=False)
        logger.add(
            log_file or os.environ.get("OMNIQ_LOG_FILE") or "logs/omniq.log",
            level=level,
            serialize=True,
            rotation=rotation or os.environ.get("OMNIQ_LOG_ROTATION") or "100 MB",
            retention=retention or os.environ.get("OMNIQ_LOG_RETENTION") or "30 days",
            enqueue=True,
            diagnose=False,
        )
    logger.enable("omniq_mp")


def get_logger() -> Logger:
    """The loguru logger (bind fields on it for structured context)."""
    return logger


def bind_task(task_id: str, **context: Any) -> Logger:
    """A logger whose records carry ``task_id``, ``correlation_id`` and ``context``."""
    return logger.bind(task_id=task_id, correlation_id=task_id, **context)


@contextmanager
def task_context(task_id: str, operation: str, **context: Any) -> Iterator[Logger]:
    """Log the start, end and duration of an operation on a task; exceptions are logged
    with the same correlation id and re-raised."""
    log = bind_task(task_id, operation=operation, **context)
    began = time.perf_counter()
    log.debug("{} started", operation)
    try:
        yield log
    except BaseException as exc:
        log.bind(duration=round(time.perf_counter() - began, 6)).error(
            "{} failed: {!r}", operation, exc
        )
        raise
    log.bind(duration=round(time.perf_counter() - began, 6)).debug("{} finished", operation)


def log_task_enqueued(task_id: str, func_name: str) -> None:
    """Record that a task was stored."""
    bind_task(task_id, action="task_enqueued").info("task {} enqueued: {}", task_id, func_name)


def log_task_started(task_id: str, attempt: int) -> None:
    """Record that an attempt started."""
    bind_task(task_id, action="task_started").info("task {} attempt {} started", task_id, attempt)


def log_task_completed(task_id: str, attempt: int) -> None:
    """Record that an attempt succeeded."""
    bind_task(task_id, action="task_completed").info(
        "task {} completed on attempt {}", task_id, attempt
    )


def log_task_failed(task_id: str, error: str, will_retry: bool = False) -> None:
    """Record that an attempt failed, and whether it will be retried."""
    bind_task(task_id, action="task_failed", will_retry=will_retry).warning(
        "task {} failed: {}{}", task_id, error, " (will retry)" if will_retry else ""
    )


def log_worker_started(worker_id: str, concurrency: int | None = None) -> None:
    """Record that a supervisor came online."""
    logger.bind(worker=worker_id, action="worker_online").info(
        "worker {} started ({} processes)", worker_id, concurrency
    )


def log_worker_stopped(worker_id: str) -> None:
    """Record that a supervisor went offline."""
    logger.bind(worker=worker_id, action="worker_offline").info("worker {} stopped", worker_id)


def log_storage_error(operation: str, error: str) -> None:
    """Record a storage failure."""
    logger.bind(action="storage_error", operation=operation).error(
        "storage {} failed: {}", operation, error
    )


def log_serialization_error(operation: str, error: str) -> None:
    """Record a serialization failure."""
    logger.bind(action="serialization_error", operation=operation).error(
        "serialization {} failed: {}", operation, error
    )
