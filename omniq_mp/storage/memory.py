"""In-process storage: the reference implementation of the protocol, for tests and examples.

It keeps nothing across processes or restarts. Because it is the simplest correct backend,
the contract suite runs against it too, and its behaviour is what the others must match.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

from omniq_mp.models import Settlement, Task, TaskStatus
from omniq_mp.schedule import Schedule
from omniq_mp.storage.base import (
    RENEWAL_STEP,
    Lease,
    QueueStats,
    WorkerInfo,
    one_per_key,
    within_budget,
)

__all__ = ["MemoryStorage"]


class MemoryStorage:
    """A dict of tasks guarded by the event loop (every method runs without awaiting)."""

    def __init__(self) -> None:
        self._tasks: dict[str, Task] = {}
        self._order: dict[str, int] = {}  # task id -> insertion number, the FIFO tie-break
        self._seq = itertools.count()  # never reused, even after purges
        self._workers: dict[str, WorkerInfo] = {}
        self._schedules: dict[str, Schedule] = {}

    async def open(self) -> None:
        """Nothing to open."""

    async def close(self) -> None:
        """Nothing to close; the tasks stay readable."""

    async def enqueue(self, tasks: Sequence[Task]) -> list[str]:
        """Store copies, so later changes to the caller's objects do not leak in."""
        for task in tasks:
            if task.id in self._tasks:
                raise ValueError(f"task id {task.id} already exists")
        ids = []
        for task in tasks:
            existing = task.key and self._unfinished_with_key(task.key)
            if existing:
                ids.append(existing)
                continue
            self._order[task.id] = next(self._seq)
            self._tasks[task.id] = replace(task)
            ids.append(task.id)
        return ids

    async def key_holder(self, key: str) -> str | None:
        """The id of the unfinished task holding ``key``, or None."""
        return self._unfinished_with_key(key)

    def _unfinished_with_key(self, key: str) -> str | None:
        for t in self._tasks.values():
            if t.key == key and not t.status.is_terminal:
                return t.id
        return None

    async def claim(
        self,
        queues: Sequence[str],
        limit: int,
        now: float,
        lease_until: float,
        worker_id: str,
        max_bytes: int | None = None,
        min_tasks: int = 1,
    ) -> list[Task]:
        """Take the best due tasks, mark them RUNNING with a fresh lease."""
        due = [
            t
            for t in self._tasks.values()
            if t.status is TaskStatus.PENDING and t.queue in queues and t.eta <= now
        ]
        rank = {q: i for i, q in enumerate(queues)}
        due.sort(key=lambda t: (rank[t.queue], -t.priority, t.eta, self._order[t.id]))
        fitting = within_budget(
            (len(t.payload) for t in due[: max(limit, 0)]), max_bytes, min_tasks
        )
        claimed = []
        for task in due[:fitting]:
            task.status = TaskStatus.RUNNING
            task.attempts += 1
            task.lease_token = uuid.uuid4().hex
            task.lease_until = lease_until
            task.worker_id = worker_id
            task.started_at = now
            claimed.append(replace(task))
        return claimed

    async def next_due(self, queues: Sequence[str], now: float) -> float | None:
        """The earliest ETA after ``now`` among PENDING tasks of ``queues`` (None: none)."""
        return min(
            (
                t.eta
                for t in self._tasks.values()
                if t.status is TaskStatus.PENDING and t.queue in queues and t.eta > now
            ),
            default=None,
        )

    async def settle(self, settlements: Sequence[Settlement]) -> list[bool]:
        """Apply each settlement whose token still matches a RUNNING task."""
        applied = []
        for s in settlements:
            task = self._tasks.get(s.task_id)
            ok = task is not None and _holds(task, s.lease_token)
            if ok and task is not None:
                _apply(task, s)
                # An interval task cancelled while it ran ends there: no next run.
                if s.follow_up is not None and task.status is not TaskStatus.CANCELLED:
                    await self.enqueue([s.follow_up])
            applied.append(ok)
        return applied

    async def extend_leases(self, leases: Mapping[str, str], lease_until: float) -> set[str]:
        """Push lease ends forward; report ids whose token no longer holds."""
        lost = set()
        for task_id, token in leases.items():
            task = self._tasks.get(task_id)
            if task is not None and _holds(task, token):
                # Strictly later than before, whatever the holder's clock says: observers
                # recognise a renewal by the change (see running_leases).
                task.lease_until = max(lease_until, (task.lease_until or 0) + RENEWAL_STEP)
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

    async def running_leases(self) -> list[Lease]:
        """The lease of every RUNNING task."""
        return [
            Lease(t.id, t.lease_token or "", t.lease_until)
            for t in self._tasks.values()
            if t.status is TaskStatus.RUNNING
        ]

    async def get(self, task_id: str) -> Task | None:
        """A copy of the task, or None."""
        task = self._tasks.get(task_id)
        return None if task is None else replace(task)

    async def get_many(self, task_ids: Sequence[str]) -> list[Task]:
        """Copies of the tasks among ``task_ids`` that exist."""
        return [replace(self._tasks[i]) for i in task_ids if i in self._tasks]

    async def cancel(self, task_id: str, now: float) -> Task | None:
        """Cancel if PENDING; flag if RUNNING; otherwise leave it as it is."""
        task = self._tasks.get(task_id)
        if task is None:
            return None
        if task.status is TaskStatus.PENDING:
            _finish(task, TaskStatus.CANCELLED, now)
        elif task.status is TaskStatus.RUNNING:
            task.cancel_requested = True
        return replace(task)

    async def cancel_requests(self, task_ids: Sequence[str]) -> set[str]:
        """Running tasks among ``task_ids`` whose cancellation was requested."""
        return {
            tid
            for tid in task_ids
            if (t := self._tasks.get(tid)) is not None
            and t.status is TaskStatus.RUNNING
            and t.cancel_requested
        }

    async def list_tasks(
        self, status: TaskStatus, queues: Sequence[str] | None, limit: int
    ) -> list[Task]:
        """Tasks in ``status``, newest first."""
        found = [
            replace(t)
            for t in self._tasks.values()
            if t.status is status and (queues is None or t.queue in queues)
        ]
        found.sort(key=lambda t: t.finished_at or t.created_at, reverse=True)
        return found[:limit]

    async def revive(self, task_ids: Sequence[str] | None, now: float) -> list[str]:
        """Re-queue DEAD (or named FAILED) tasks with fresh budgets."""
        if task_ids is None:
            chosen = [t for t in self._tasks.values() if t.status is TaskStatus.DEAD]
        else:
            revivable = (TaskStatus.DEAD, TaskStatus.FAILED)
            chosen = [
                t
                for tid in task_ids
                if (t := self._tasks.get(tid)) is not None and t.status in revivable
            ]
        chosen = sorted({t.id: t for t in chosen}.values(), key=lambda t: self._order[t.id])
        held = {t.key for t in self._tasks.values() if t.key and not t.status.is_terminal}
        allowed = set(one_per_key(((t.id, t.key) for t in chosen), held))
        chosen = [t for t in chosen if t.id in allowed]
        for t in chosen:
            t.status, t.attempts, t.crashes, t.eta = TaskStatus.PENDING, 0, 0, now
            t.finished_at = t.expires_at = None
            t.cancel_requested = False
        return [t.id for t in chosen]

    async def purge_expired(self, now: float, limit: int) -> int:
        """Forget finished tasks whose retention ended."""
        return self._forget(
            [t for t in self._tasks.values() if t.expires_at is not None and t.expires_at <= now],
            limit,
        )

    async def purge_finished(
        self, before: float, statuses: Sequence[TaskStatus], limit: int
    ) -> int:
        """Forget tasks in ``statuses`` finished before ``before``."""
        return self._forget(
            [
                t
                for t in self._tasks.values()
                if t.status in statuses and t.finished_at is not None and t.finished_at < before
            ],
            limit,
        )

    def _forget(self, tasks: list[Task], limit: int) -> int:
        for t in tasks[:limit]:
            del self._tasks[t.id]
            del self._order[t.id]
        return min(len(tasks), limit)

    async def stats(self, queues: Sequence[str] | None, now: float) -> QueueStats:
        """Counts by status."""
        tasks = [t for t in self._tasks.values() if queues is None or t.queue in queues]
        return count_tasks(tasks, now)

    async def add_schedule(self, schedule: Schedule) -> None:
        """Keep a copy of the schedule."""
        self._schedules[schedule.id] = replace(schedule)

    async def schedules(self) -> list[Schedule]:
        """Copies of every schedule."""
        return sorted((replace(s) for s in self._schedules.values()), key=lambda s: s.next_run)

    async def set_paused(self, schedule_id: str, paused: bool) -> Schedule | None:
        """Pause or resume."""
        schedule = self._schedules.get(schedule_id)
        if schedule is None:
            return None
        schedule.paused = paused
        return replace(schedule)

    async def remove_schedule(self, schedule_id: str) -> bool:
        """Forget a schedule."""
        return self._schedules.pop(schedule_id, None) is not None

    async def fire_schedules(
        self, now: float, next_run: Callable[[Schedule, float], float]
    ) -> list[str]:
        """Create the due schedules' tasks (no await inside: atomic in one loop)."""
        fired = []
        for schedule in self._schedules.values():
            if schedule.paused or schedule.next_run > now:
                continue
            task = schedule.task_for(schedule.next_run)
            self._order[task.id] = next(self._seq)
            self._tasks[task.id] = task
            schedule.next_run = next_run(schedule, now)
            schedule.last_task_id = task.id
            fired.append(task.id)
        return fired

    async def queue_names(self) -> list[str]:
        """Queues that hold tasks."""
        return sorted({t.queue for t in self._tasks.values()})

    async def completed_since(self, queues: Sequence[str] | None, since: float) -> int:
        """COMPLETED tasks finished at or after ``since``."""
        return sum(
            t.status is TaskStatus.COMPLETED
            and (t.finished_at or 0) >= since
            and (queues is None or t.queue in queues)
            for t in self._tasks.values()
        )

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
    now = s.finished_at if s.finished_at is not None else time.time()
    task.lease_token = None
    task.lease_until = None
    task.crashes += int(s.crashed)
    if s.error is not None:
        task.error = s.error
        task.history = (*task.history, s.error)
    if task.cancel_requested:  # a cancel wins over any outcome; a late result is dropped
        task.result = None
        _finish(task, TaskStatus.CANCELLED, now)
    elif s.status is TaskStatus.PENDING:
        task.status = TaskStatus.PENDING
        task.attempts -= int(s.uncharge)
        task.eta = s.eta if s.eta is not None else task.eta
        task.worker_id = None
    else:
        task.result = s.result
        _finish(task, s.status, now)


def _finish(task: Task, status: TaskStatus, now: float) -> None:
    task.status = status
    task.finished_at = now
    task.expires_at = None if task.result_ttl is None else now + task.result_ttl


def count_tasks(tasks: Sequence[Task], now: float) -> QueueStats:
    """Count tasks by status; shared by backends that hold records in Python."""
    counts = dict.fromkeys(("pending", "due", "retrying", "running"), 0)
    counts.update(completed=0, failed=0, cancelled=0, dead=0)
    for t in tasks:
        counts[t.status.value.lower()] += 1
        if t.status is TaskStatus.PENDING:
            counts["due"] += t.eta <= now
            counts["retrying"] += t.attempts > 0
    return QueueStats(**counts)
