"""In-process storage: the reference implementation of the protocol, for tests and examples.

It keeps nothing across processes or restarts. Because it is the simplest correct backend,
the contract suite runs against it too, and its behaviour is what the others must match.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import replace

from omniq_mp.models import Settlement, Task, TaskStatus
from omniq_mp.storage.base import QueueStats, WorkerInfo

__all__ = ["MemoryStorage"]


class MemoryStorage:
    """A dict of tasks guarded by the event loop (every method runs without awaiting)."""

    def __init__(self) -> None:
        self._tasks: dict[str, Task] = {}
        self._order: dict[str, int] = {}  # task id -> insertion number, the FIFO tie-break
        self._workers: dict[str, WorkerInfo] = {}

    async def open(self) -> None:
        """Nothing to open."""

    async def close(self) -> None:
        """Nothing to close; the tasks stay readable."""

    async def enqueue(self, tasks: Sequence[Task]) -> None:
        """Store copies, so later changes to the caller's objects do not leak in."""
        for task in tasks:
            if task.id in self._tasks:
                raise ValueError(f"task id {task.id} already exists")
        for task in tasks:
            self._order[task.id] = len(self._order)
            self._tasks[task.id] = replace(task)

    async def claim(
        self, queues: Sequence[str], limit: int, now: float, lease_until: float, worker_id: str
    ) -> list[Task]:
        """Take the best due tasks, mark them RUNNING with a fresh lease."""
        due = [
            t
            for t in self._tasks.values()
            if t.status is TaskStatus.PENDING and t.queue in queues and t.eta <= now
        ]
        due.sort(key=lambda t: (-t.priority, t.eta, self._order[t.id]))
        claimed = []
        for task in due[: max(limit, 0)]:
            task.status = TaskStatus.RUNNING
            task.attempts += 1
            task.lease_token = uuid.uuid4().hex
            task.lease_until = lease_until
            task.worker_id = worker_id
            task.started_at = now
            claimed.append(replace(task))
        return claimed

    async def settle(self, settlements: Sequence[Settlement]) -> list[bool]:
        """Apply each settlement whose token still matches a RUNNING task."""
        applied = []
        for s in settlements:
            task = self._tasks.get(s.task_id)
            ok = task is not None and _holds(task, s.lease_token)
            if ok and task is not None:
                _apply(task, s)
                if s.follow_up is not None:
                    await self.enqueue([s.follow_up])
            applied.append(ok)
        return applied

    async def extend_leases(self, leases: Mapping[str, str], lease_until: float) -> set[str]:
        """Push lease ends forward; report ids whose token no longer holds."""
        lost = set()
        for task_id, token in leases.items():
            task = self._tasks.get(task_id)
            if task is not None and _holds(task, token):
                task.lease_until = lease_until
            else:
                lost.add(task_id)
        return lost

    async def expired(self, now: float, limit: int) -> list[Task]:
        """RUNNING tasks past their lease."""
        found = [
            replace(t)
            for t in self._tasks.values()
            if t.status is TaskStatus.RUNNING and (t.lease_until or 0) < now
        ]
        found.sort(key=lambda t: t.lease_until or 0)
        return found[:limit]

    async def get(self, task_id: str) -> Task | None:
        """A copy of the task, or None."""
        task = self._tasks.get(task_id)
        return None if task is None else replace(task)

    async def cancel(self, task_id: str, now: float) -> Task | None:
        """Cancel if PENDING; otherwise leave it as it is."""
        task = self._tasks.get(task_id)
        if task is None:
            return None
        if task.status is TaskStatus.PENDING:
            task.status = TaskStatus.CANCELLED
            task.finished_at = now
        return replace(task)

    async def stats(self, queues: Sequence[str] | None, now: float) -> QueueStats:
        """Counts by status."""
        tasks = [t for t in self._tasks.values() if queues is None or t.queue in queues]
        return count_tasks(tasks, now)

    async def heartbeat(self, info: WorkerInfo) -> None:
        """Remember the supervisor's latest beat."""
        self._workers[info.worker_id] = info

    async def remove_worker(self, worker_id: str) -> None:
        """Forget a supervisor."""
        self._workers.pop(worker_id, None)

    async def workers(self, alive_since: float) -> list[WorkerInfo]:
        """Supervisors seen recently."""
        return [w for w in self._workers.values() if w.heartbeat_at >= alive_since]


def _holds(task: Task, token: str) -> bool:
    return task.status is TaskStatus.RUNNING and task.lease_token == token


def _apply(task: Task, s: Settlement) -> None:
    task.status = s.status
    task.lease_token = None
    task.lease_until = None
    if s.uncharge:
        task.attempts = max(0, task.attempts - 1)
    if s.error is not None:
        task.error = s.error
    if s.status is TaskStatus.PENDING:
        task.eta = s.eta if s.eta is not None else task.eta
        task.worker_id = None
    else:
        task.result = s.result
        task.finished_at = s.finished_at


def count_tasks(tasks: Sequence[Task], now: float) -> QueueStats:
    """Count tasks by status; shared by backends that hold records in Python."""
    counts = dict.fromkeys(("pending", "due", "retrying", "running"), 0)
    counts.update(completed=0, failed=0, cancelled=0)
    for t in tasks:
        counts[t.status.value.lower()] += 1
        if t.status is TaskStatus.PENDING:
            counts["due"] += t.eta <= now
            counts["retrying"] += t.attempts > 0
    return QueueStats(**counts)
