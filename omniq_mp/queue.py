"""AsyncTaskQueue: enqueue and claim, and what each attempt's outcome does to a task.

The queue is the only place that decides retries, backoff and interval rescheduling. It
turns an attempt's :class:`~omniq_mp.models.Outcome` into a
:class:`~omniq_mp.models.Settlement`, a plain write the storage applies under the lease
token, so the policy is testable without processes or storage.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, cast

from omniq_mp.errors import SerializationError
from omniq_mp.models import (
    ErrorKind,
    Outcome,
    OutcomeKind,
    Settlement,
    Task,
    TaskError,
    TaskStatus,
)
from omniq_mp.retry import RetryPolicy
from omniq_mp.serialization import dumps_result
from omniq_mp.signing import RESULT, Signer
from omniq_mp.storage.base import QueueStats, Storage
from omniq_mp.storage.capabilities import CarriesClaims
from omniq_mp.task_builder import build_task

__all__ = ["AsyncTaskQueue", "build_task"]

Clock = Callable[[], float]


class AsyncTaskQueue:
    """Task queue logic over any :class:`~omniq_mp.storage.base.Storage`.

    :param storage: an opened or unopened storage backend.
    :param retry_policy: backoff used for retries.
    :param clock: wall-clock source (epoch seconds); tests pass a fake one.
    :param max_crashes: starts whose process dies before a task is quarantined as DEAD.
    :param signer: signs the payloads :meth:`enqueue` builds and the results
        :meth:`complete_task` pickles (None: signing off).
    """

    def __init__(
        self,
        storage: Storage,
        *,
        retry_policy: RetryPolicy | None = None,
        clock: Clock = time.time,
        max_crashes: int = 3,
        signer: Signer | None = None,
    ) -> None:
        self.storage = storage
        # Asked once: a runtime protocol check costs about 10 µs, and settles ask often.
        self._carries_claims = isinstance(storage, CarriesClaims)
        self.signer = signer
        self.retry_policy = retry_policy or RetryPolicy()
        self.clock = clock
        self.max_crashes = max_crashes

    # -- producing ---------------------------------------------------------------------------

    async def enqueue(
        self,
        func_path: Callable[..., Any] | str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> str:
        """Store a new task and return its id. Options are those of :func:`build_task`."""
        task = build_task(func_path, args, kwargs, now=self.clock(), signer=self.signer, **options)
        [task_id] = await self.storage.enqueue([task])
        return task_id

    async def enqueue_tasks(self, tasks: Sequence[Task]) -> list[str]:
        """Store already-built tasks in one transaction; returns their ids (for a task whose
        ``key`` is held by an unfinished task, that task's id)."""
        return await self.storage.enqueue(tasks)

    # -- consuming ---------------------------------------------------------------------------

    async def next_due(self, queues: Sequence[str]) -> float | None:
        """The earliest ETA still ahead (on this queue's clock) among PENDING tasks of
        ``queues``; None if there is none."""
        return await self.storage.next_due(queues, self.clock())

    async def claim(
        self,
        queues: Sequence[str],
        limit: int,
        worker_id: str,
        lease_ttl: float,
        max_bytes: int | None = None,
        min_tasks: int = 1,
    ) -> list[Task]:
        """Claim up to ``limit`` due tasks with a lease of ``lease_ttl`` seconds: the first
        ``min_tasks`` whatever their size, then those whose payloads fit in ``max_bytes``
        (see :meth:`Storage.claim`)."""
        now = self.clock()
        return await self.storage.claim(
            queues, limit, now, now + lease_ttl, worker_id, max_bytes, min_tasks
        )

    @property
    def carries_claims(self) -> bool:
        """Whether the store can claim in the transaction that stores outcomes
        (:class:`~omniq_mp.storage.capabilities.CarriesClaims`: SQLite and PostgreSQL)."""
        return self._carries_claims

    async def settle_and_claim(
        self,
        settlements: Sequence[Settlement],
        queues: Sequence[str],
        limit: int,
        worker_id: str,
        lease_ttl: float,
        max_bytes: int | None = None,
        min_tasks: int = 1,
    ) -> tuple[list[bool], list[Task]]:
        """Store ``settlements`` and claim as :meth:`claim` does, in one transaction: what
        each would return.

        :raises TypeError: the store does not :attr:`carries_claims`.
        """
        if not self._carries_claims:
            raise TypeError(f"{type(self.storage).__name__} cannot claim while it settles")
        store = cast(CarriesClaims, self.storage)  # checked above, once for all calls
        now = self.clock()
        return await store.settle_and_claim(
            settlements, queues, limit, now, now + lease_ttl, worker_id, max_bytes, min_tasks
        )

    async def dequeue(
        self, queues: Sequence[str] = ("default",), worker_id: str = "local", lease_ttl: float = 30
    ) -> Task | None:
        """Claim the next due task, or None."""
        tasks = await self.claim(queues, 1, worker_id, lease_ttl)
        return tasks[0] if tasks else None

    async def complete_task(self, task_id: str, result: Any = None, *, task: Task) -> bool:
        """Record success for a claimed task; reschedules an interval task. ``result`` is a
        value to pickle (and sign), or bytes already pickled (and signed) by a worker."""
        body = result if isinstance(result, bytes) else dumps_result(result)
        if self.signer is not None and not isinstance(result, bytes):
            body = self.signer.seal(task.id, RESULT, body)
        [ok] = await self.storage.settle(
            [self.settlement(task, Outcome(OutcomeKind.SUCCEEDED, body))]
        )
        return ok

    async def fail_task(
        self, task_id: str, error: str | BaseException | TaskError, *, task: Task
    ) -> TaskStatus:
        """Record a failure; the task is retried with backoff while its budget lasts.

        :returns: PENDING if a retry was scheduled, FAILED if not.
        """
        err = _as_error(error)
        settlement = self.settlement(task, Outcome(OutcomeKind.FAILED, error=err))
        await self.storage.settle([settlement])
        return settlement.status

    # -- policy ------------------------------------------------------------------------------

    def settlement(self, task: Task, outcome: Outcome) -> Settlement:
        """What an attempt's outcome does to its task: the whole retry policy.

        Two budgets: exceptions and timeouts are retried while the task's non-crash
        executions stay within ``max_retries``; a start whose process died (crash, memory
        limit, lost supervisor) spends the crash budget, and the task is quarantined as
        DEAD once ``max_crashes`` starts have died, so a poison task cannot loop.
        """
        now = self.clock()
        token = task.lease_token or ""
        if outcome.kind is OutcomeKind.SUCCEEDED:
            return Settlement(
                task.id,
                token,
                TaskStatus.COMPLETED,
                result=outcome.result,
                finished_at=now,
                follow_up=self._next_run(task, now),
            )
        if outcome.kind is OutcomeKind.ABORTED:
            return self._aborted(task, token, outcome, now)
        if outcome.kind is OutcomeKind.CRASHED:
            return self._crashed(task, token, outcome, now)
        error = self._charged_error(task, outcome)
        executions = task.attempts - task.crashes  # crashes have their own budget
        if self.retry_policy.should_retry(executions, task.max_retries, error.is_retryable):
            eta = now + self.retry_policy.delay(executions)
            return Settlement(task.id, token, TaskStatus.PENDING, error=error, eta=eta)
        return self._final(task, token, TaskStatus.FAILED, error, now)

    def _aborted(self, task: Task, token: str, outcome: Outcome, now: float) -> Settlement:
        if outcome.error is not None and outcome.error.kind == ErrorKind.CANCELLED.value:
            return Settlement(
                task.id, token, TaskStatus.CANCELLED, error=outcome.error, finished_at=now
            )
        # Stopped by us (shutdown, lost lease): not the task's fault, the attempt is given back.
        return Settlement(task.id, token, TaskStatus.PENDING, uncharge=True, eta=now)

    def _crashed(self, task: Task, token: str, outcome: Outcome, now: float) -> Settlement:
        error = self._charged_error(task, outcome)
        crashes = task.crashes + 1
        if crashes < self.max_crashes:
            eta = now + self.retry_policy.delay(crashes)
            return Settlement(
                task.id, token, TaskStatus.PENDING, error=error, eta=eta, crashed=True
            )
        dead = replace(
            error,
            message=f"quarantined after {crashes} starts whose process died; last: {error.message}",
            is_retryable=False,
        )
        return replace(self._final(task, token, TaskStatus.DEAD, dead, now), crashed=True)

    def _final(
        self, task: Task, token: str, status: TaskStatus, error: TaskError, now: float
    ) -> Settlement:
        return Settlement(
            task.id,
            token,
            status,
            error=error,
            finished_at=now,
            follow_up=self._next_run(task, now),
        )

    def lost_settlement(self, task: Task) -> Settlement:
        """What happens to a task whose lease expired: its holder died mid-attempt, which
        counts against the task's crash budget (it may be what killed its supervisor)."""
        error = TaskError(
            "WorkerLost",
            f"the supervisor {task.worker_id} running attempt {task.attempts} stopped "
            "renewing its lease (killed or frozen)",
            kind=ErrorKind.LOST.value,
        )
        return self.settlement(task, Outcome(OutcomeKind.CRASHED, error=error))

    def release_settlement(self, task: Task) -> Settlement:
        """Give a claimed, never-started task back to the queue, uncharged."""
        return self.settlement(task, Outcome(OutcomeKind.ABORTED))

    def _charged_error(self, task: Task, outcome: Outcome) -> TaskError:
        base = outcome.error or TaskError("UnknownError", f"attempt ended as {outcome.kind}")
        return TaskError(
            base.error_type,
            base.message,
            base.traceback,
            base.is_retryable,
            retry_count=task.retries,
            max_retries=task.max_retries,
            kind=base.kind,
        )

    def _next_run(self, task: Task, now: float) -> Task | None:
        if task.interval is None:
            return None
        # Keep to the original cadence; skip slots missed while the task was down.
        eta = task.eta + task.interval
        if eta <= now:
            eta += math.ceil((now - eta) / task.interval) * task.interval
        return task.rerun(eta, now)

    # -- reading -----------------------------------------------------------------------------

    async def get_task(self, task_id: str) -> Task | None:
        """The task, or None."""
        return await self.storage.get(task_id)

    async def cancel(self, task_id: str) -> Task | None:
        """Cancel a task that has not started; returns its state (None if unknown)."""
        return await self.storage.cancel(task_id, self.clock())

    async def stats(self, queues: Sequence[str] | None = None) -> QueueStats:
        """Counts by status."""
        return await self.storage.stats(queues, self.clock())


def _as_error(error: str | BaseException | TaskError) -> TaskError:
    if isinstance(error, TaskError):
        return error
    if isinstance(error, BaseException):
        return TaskError.from_exception(error)
    if isinstance(error, str):
        return TaskError("Error", error)
    raise SerializationError(f"error must be a str, exception or TaskError, got {error!r}")
