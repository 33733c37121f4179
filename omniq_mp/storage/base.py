"""The storage seam: a domain-level protocol every backend implements.

The supervisor and the queue speak only this protocol, never SQL or file paths, so the
memory, SQLite and file backends are interchangeable and pass one contract suite
(``tests/contract``). Every write that ends an attempt is *fenced* by the lease token the
attempt was claimed with: a stale holder's late write changes nothing. The faster paths a
store may add beyond this protocol are in :mod:`omniq_mp.storage.capabilities`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from omniq_mp.models import Settlement, Task, TaskStatus
from omniq_mp.schedule import Schedule

__all__ = ["RENEWAL_STEP", "Lease", "QueueStats", "Storage", "WorkerInfo", "one_per_key"]


@dataclass(frozen=True)
class QueueStats:
    """Task counts of one store (or of some of its queues) at one moment.

    ``due`` counts PENDING tasks whose ``eta`` has come; ``retrying`` counts PENDING tasks
    that already ran at least once (waiting out a backoff).
    """

    pending: int = 0
    due: int = 0
    retrying: int = 0
    running: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    dead: int = 0

    @property
    def unfinished(self) -> int:
        """Tasks not yet in a terminal state."""
        return self.pending + self.running

    @property
    def total(self) -> int:
        """Every task counted, whatever its status."""
        return self.unfinished + self.completed + self.failed + self.cancelled + self.dead


@dataclass(frozen=True)
class WorkerInfo:
    """A supervisor's heartbeat record."""

    worker_id: str
    hostname: str
    pid: int
    procs: int
    queues: tuple[str, ...]
    started_at: float
    heartbeat_at: float
    details: Mapping[str, Any] = field(default_factory=dict)  # counters and children, as JSON


# Seconds a renewal adds at least to the stored lease end, so that every renewal changes it.
RENEWAL_STEP = 0.001


@dataclass(frozen=True)
class Lease:
    """What another supervisor sees of a RUNNING task's lease.

    ``until`` is the lease end its holder last wrote, on the holder's wall clock. Observers
    never compare it with their own clock; they only watch whether ``(token, until)``
    changes, which every renewal guarantees (SQLite, file and memory stores make ``until``
    strictly increase). A lease unchanged for ``lease_ttl`` of the observer's monotonic
    time belongs to a holder that stopped renewing.
    """

    task_id: str
    token: str
    until: float | None


@runtime_checkable
class Storage(Protocol):
    """Durable task storage. All times are wall-clock epoch seconds."""

    async def open(self) -> None:
        """Create or open the store; raise StorageError with a clear reason if impossible."""

    async def close(self) -> None:
        """Release connections and handles. Safe to call twice."""

    async def enqueue(self, tasks: Sequence[Task]) -> list[str]:
        """Insert tasks atomically: all are stored, or none is and the call raises.

        A task with a ``key`` already held by an unfinished (PENDING or RUNNING) task is not
        inserted; the returned list, one id per task, gives that task's id instead.
        """
        ...

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
        """Atomically take up to ``limit`` due PENDING tasks of ``queues``.

        Order: higher priority first, then earlier eta, then first enqueued. Each claimed
        task becomes RUNNING with ``attempts + 1``, a fresh ``lease_token`` and
        ``lease_until``. No task is ever handed to two claimers.

        ``max_bytes`` bounds the memory a claim brings in: its first ``min_tasks`` tasks
        come whatever their size (a supervisor's idle workers take them at once), and the
        payloads of those after them add up to at most ``max_bytes``. The claim stops at
        the first task that does not fit; it never skips ahead to a smaller one, which
        would break the order.
        """
        ...

    async def next_due(self, queues: Sequence[str], now: float) -> float | None:
        """The earliest ``eta`` after ``now`` of a PENDING task of ``queues``; None if no
        such task. An idle supervisor sleeps until then rather than until its next poll,
        which finds tasks with an ETA that no wake-up announced (stored before it started,
        or by a producer on another host)."""
        ...

    async def settle(self, settlements: Sequence[Settlement]) -> list[bool]:
        """Apply attempt outcomes in one transaction; False where the token no longer holds.

        A task whose cancellation was requested ends CANCELLED whatever the settlement
        says, and its result is discarded. Crashed settlements add one to ``crashes``;
        every error is appended to ``history``; terminal ones set ``expires_at`` to
        ``finished_at + result_ttl``.
        """
        ...

    async def extend_leases(self, leases: Mapping[str, str], lease_until: float) -> set[str]:
        """Renew leases given as ``{task_id: token}``; return the ids whose lease was lost.

        In a store whose supervisors judge leases by observation (all but those setting
        ``judges_lease_expiry``), every renewal must change what :meth:`running_leases`
        reports for the task, even when the holder's clock stands still or steps back.
        """
        ...

    async def expired(self, now: float, limit: int) -> list[Task]:
        """RUNNING tasks whose lease ended before ``now`` (their holder is presumed dead)."""
        ...

    async def running_leases(self) -> list[Lease]:
        """The lease of every RUNNING task: a light read (no payloads, no write lock) that
        supervisors repeat to judge leases on their own monotonic clock."""
        ...

    async def get(self, task_id: str) -> Task | None:
        """The task with this id, or None."""
        ...

    async def get_many(self, task_ids: Sequence[str]) -> list[Task]:
        """The tasks among ``task_ids`` that exist, in no particular order."""
        ...

    async def cancel(self, task_id: str, now: float) -> Task | None:
        """Cancel a PENDING task at once, or flag a RUNNING one (``cancel_requested``) for
        its supervisor to kill; return the task as it now is (None if unknown)."""
        ...

    async def key_holder(self, key: str) -> str | None:
        """The id of the unfinished (PENDING or RUNNING) task holding ``key``, or None:
        the current run of an interval task, whose runs share their first one's key."""
        ...

    async def cancel_requests(self, task_ids: Sequence[str]) -> set[str]:
        """Those of ``task_ids`` that are RUNNING with a cancellation requested."""
        ...

    async def list_tasks(
        self, status: TaskStatus, queues: Sequence[str] | None, limit: int
    ) -> list[Task]:
        """Up to ``limit`` tasks in ``status``, most recently finished (or created) first."""
        ...

    async def revive(self, task_ids: Sequence[str] | None, now: float) -> list[str]:
        """Re-queue the given DEAD or FAILED tasks (every DEAD one when None) with fresh
        attempt and crash budgets; return the ids re-queued, first enqueued first. One
        unfinished task per key still holds: see :func:`one_per_key`."""
        ...

    async def purge_expired(self, now: float, limit: int) -> int:
        """Delete up to ``limit`` finished tasks whose ``expires_at`` has passed."""
        ...

    async def purge_finished(
        self, before: float, statuses: Sequence[TaskStatus], limit: int
    ) -> int:
        """Delete up to ``limit`` tasks in ``statuses`` that finished before ``before``."""
        ...

    async def stats(self, queues: Sequence[str] | None, now: float) -> QueueStats:
        """Counts by status, over ``queues`` or the whole store."""
        ...

    async def add_schedule(self, schedule: Schedule) -> None:
        """Store a new cron schedule."""

    async def schedules(self) -> list[Schedule]:
        """Every schedule, paused ones included."""
        ...

    async def set_paused(self, schedule_id: str, paused: bool) -> Schedule | None:
        """Pause or resume a schedule; None if unknown."""
        ...

    async def remove_schedule(self, schedule_id: str) -> bool:
        """Delete a schedule; False if unknown."""
        ...

    async def fire_schedules(
        self, now: float, next_run: Callable[[Schedule, float], float]
    ) -> list[str]:
        """Atomically, for every unpaused schedule due at ``now``: insert its task (eta = the
        due time) and move ``next_run`` to ``next_run(schedule, now)``. Two callers never
        fire one due time twice. Returns the new task ids."""
        ...

    async def queue_names(self) -> list[str]:
        """Names of every queue that holds at least one task, sorted."""
        ...

    async def completed_since(self, queues: Sequence[str] | None, since: float) -> int:
        """How many tasks (of ``queues``; None: all) completed at or after ``since``."""
        ...

    async def heartbeat(self, info: WorkerInfo) -> None:
        """Record that a supervisor is alive (replacing its previous record)."""

    async def remove_worker(self, worker_id: str) -> None:
        """Forget a supervisor that stopped cleanly."""

    async def workers(self, alive_since: float) -> list[WorkerInfo]:
        """Supervisors whose last heartbeat is at or after ``alive_since``."""
        ...


def one_per_key(candidates: Iterable[tuple[str, str | None]], held: Collection[str]) -> list[str]:
    """The ids among ``candidates`` ((id, key) pairs of finished tasks, first enqueued
    first) that revive may re-queue and still leave one unfinished task per key: those
    without a key, and of those with one, the first whose key no unfinished task holds
    (``held``). The runs of an interval series share a key, so a failed run is not
    revived beside the series' next run."""
    taken = set(held)
    chosen: list[str] = []
    for task_id, key in candidates:
        if key is not None:
            if key in taken:
                continue
            taken.add(key)
        chosen.append(task_id)
    return chosen


class ClaimBudget:
    """The byte bound of one claim (see :meth:`Storage.claim`), met one candidate at a
    time in claim order: the first ``min_tasks`` come whatever their size, those after
    them while their payloads add up to at most ``max_bytes`` (None: no bound). A size of
    None is a candidate whose payload is missing: the claim sets it aside, so it takes
    neither bytes nor a place."""

    def __init__(self, max_bytes: int | None, min_tasks: int = 1) -> None:
        self.room = max_bytes
        self.free = min_tasks

    def fits(self, size: int | None) -> bool:
        """Whether a candidate of ``size`` may come; the claim stops at the first that may
        not (taking a smaller one behind it would break the order)."""
        return size is None or self.free > 0 or self.room is None or size <= self.room

    def take(self, size: int | None) -> None:
        """Count a candidate that came."""
        if size is None:
            return
        if self.free > 0:
            self.free -= 1
        elif self.room is not None:
            self.room -= size


def within_budget(sizes: Iterable[int | None], max_bytes: int | None, min_tasks: int = 1) -> int:
    """How many candidates a claim takes, given their payload ``sizes`` in claim order
    (:class:`ClaimBudget`). Reads ``sizes`` only as far as it must."""
    budget, taken = ClaimBudget(max_bytes, min_tasks), 0
    for size in sizes:
        if not budget.fits(size):
            break
        budget.take(size)
        taken += 1
    return taken
