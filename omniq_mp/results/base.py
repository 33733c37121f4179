"""The result-storage seam: where finished tasks' outcomes are kept for ``get_result``.

A result store is written by the supervisor after it settles a task in the queue store,
and read by producers. It is configured independently of the queue backend and of the
event store (``OmniQConfig(result_storage_type="redis")``). Values travel as the opaque
cloudpickle bytes the worker produced: no backend ever unpickles user objects.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from omniq_mp.models import TaskError, TaskStatus

__all__ = ["ResultStorage", "TaskResult", "check_terminal", "is_expired"]


@dataclass(frozen=True)
class TaskResult:
    """The outcome of one finished task.

    :param task_id: the task's id.
    :param status: a terminal status (COMPLETED, FAILED, CANCELLED or DEAD).
    :param result: the pickled return value (COMPLETED only; None for ``None``).
    :param error: what went wrong (FAILED, DEAD; sometimes CANCELLED).
    :param finished_at: epoch seconds.
    :param expires_at: epoch seconds after which the result may be purged (None: never).
    """

    task_id: str
    status: TaskStatus
    result: bytes | None = None
    error: TaskError | None = None
    finished_at: float = 0.0
    expires_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data (the value as ``bytes``) for backends that store documents."""
        return {
            "task_id": self.task_id,
            "status": self.status.value,
            "result": self.result,
            "error": None if self.error is None else self.error.to_dict(),
            "finished_at": self.finished_at,
            "expires_at": self.expires_at,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskResult:
        """Inverse of :meth:`to_dict`.

        :raises ValueError: a missing field or a status that is not terminal.
        """
        status = TaskStatus(data["status"])
        if not status.is_terminal:
            raise ValueError(f"a stored result must be terminal, not {status.value}")
        error = data.get("error")
        return cls(
            task_id=str(data["task_id"]),
            status=status,
            result=data.get("result"),
            error=None if error is None else TaskError.from_dict(dict(error)),
            finished_at=float(data.get("finished_at") or 0.0),
            expires_at=None if data.get("expires_at") is None else float(data["expires_at"]),
        )


def check_terminal(results: Sequence[TaskResult]) -> None:
    """Refuse a batch that holds a result with a status that is not terminal, before any
    of it is written: backends call this first thing in ``store``.

    :raises ValueError: naming the first such task id and its status.
    """
    for result in results:
        status = TaskStatus(result.status)
        if not status.is_terminal:
            raise ValueError(
                f"result of task {result.task_id!r} must have a terminal status, not {status.value}"
            )


def is_expired(result: TaskResult, now: float) -> bool:
    """Whether ``result`` is past its ``expires_at`` at ``now``: what ``get`` hides and
    ``purge_expired`` deletes (strictly before ``now``; None never expires)."""
    return result.expires_at is not None and result.expires_at < now


@runtime_checkable
class ResultStorage(Protocol):
    """Where outcomes of finished tasks are kept, keyed by task id."""

    async def open(self) -> None:
        """Connect, and create tables/buckets/folders as needed (idempotent)."""

    async def close(self) -> None:
        """Release connections (idempotent; safe if ``open`` failed or never ran)."""

    async def store(self, results: Sequence[TaskResult]) -> None:
        """Write results in one round trip where the backend allows; a result for an id
        already stored replaces it (a retried write is harmless)."""

    async def get(self, task_id: str) -> TaskResult | None:
        """The stored result, or None (unknown, purged or expired)."""
        ...

    async def get_many(self, task_ids: Sequence[str]) -> dict[str, TaskResult]:
        """The stored results among ``task_ids``, by id (missing ids are left out)."""
        ...

    async def delete(self, task_ids: Sequence[str]) -> int:
        """Delete results; return how many existed."""
        ...

    async def purge_expired(self, now: float) -> int:
        """Delete results whose ``expires_at`` is before ``now``; return how many."""
        ...
