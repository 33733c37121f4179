"""Results in a dict: for tests and for one-process use."""

from __future__ import annotations

import time
from collections.abc import Sequence

from omniq_mp.results.base import TaskResult, check_terminal, is_expired

__all__ = ["MemoryResultStorage"]


class MemoryResultStorage:
    """An in-process result store (lost when the process ends).

    A result whose ``expires_at`` has passed is no longer returned, even before
    :meth:`purge_expired` deletes it.
    """

    def __init__(self) -> None:
        self._results: dict[str, TaskResult] = {}

    async def open(self) -> None:
        """Nothing to open."""

    async def close(self) -> None:
        """Nothing to close; the results stay for a later :meth:`open`."""

    async def drop(self) -> None:
        """Delete everything this store created (tests use it to clean up)."""
        self._results.clear()

    async def store(self, results: Sequence[TaskResult]) -> None:
        """Keep the results, replacing any stored under the same ids.

        :raises ValueError: a result's status is not terminal (nothing is stored).
        """
        check_terminal(results)
        for result in results:
            self._results[result.task_id] = result

    async def get(self, task_id: str) -> TaskResult | None:
        """The result, or None when unknown or expired."""
        return _live(self._results.get(task_id), time.time())

    async def get_many(self, task_ids: Sequence[str]) -> dict[str, TaskResult]:
        """The known, unexpired results among ``task_ids``, by id."""
        now = time.time()
        found = {task_id: _live(self._results.get(task_id), now) for task_id in task_ids}
        return {task_id: result for task_id, result in found.items() if result is not None}

    async def delete(self, task_ids: Sequence[str]) -> int:
        """Forget the results; return how many there were."""
        return sum(self._results.pop(task_id, None) is not None for task_id in set(task_ids))

    async def purge_expired(self, now: float) -> int:
        """Forget results whose ``expires_at`` is before ``now``; return how many."""
        expired = [task_id for task_id, result in self._results.items() if is_expired(result, now)]
        for task_id in expired:
            del self._results[task_id]
        return len(expired)


def _live(result: TaskResult | None, now: float) -> TaskResult | None:
    return None if result is None or is_expired(result, now) else result
