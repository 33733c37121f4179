"""What each attempt outcome does to a task, on the memory backend with a fake clock."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

import pytest

from omniq_mp.errors import ConfigError, SerializationError
from omniq_mp.models import ErrorKind, Outcome, OutcomeKind, TaskError, TaskStatus
from omniq_mp.queue import AsyncTaskQueue, build_task
from omniq_mp.retry import RetryPolicy
from omniq_mp.storage.memory import MemoryStorage


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def queue(clock: FakeClock) -> AsyncTaskQueue:
    policy = RetryPolicy(jitter=0.0, rng=random.Random(0))
    return AsyncTaskQueue(MemoryStorage(), retry_policy=policy, clock=clock)


def failure(kind: ErrorKind = ErrorKind.EXCEPTION, retryable: bool = True) -> Outcome:
    err = TaskError("ValueError", "boom", is_retryable=retryable, kind=kind.value)
    return Outcome(OutcomeKind.FAILED, error=err)


async def run_until_final(queue: AsyncTaskQueue, clock: FakeClock, task_id: str) -> list[float]:
    """Claim and fail the task until it stops coming back; return the retry delays."""
    delays = []
    while (task := await queue.dequeue()) is not None:
        status = await queue.fail_task(task.id, ValueError("boom"), task=task)
        if status is TaskStatus.FAILED:
            break
        stored = await queue.get_task(task_id)
        assert stored is not None
        delays.append(stored.eta - clock.now)
        clock.now = stored.eta
    return delays


async def test_max_retries_three_means_four_executions_with_doubling_backoff(
    queue: AsyncTaskQueue, clock: FakeClock
) -> None:
    task_id = await queue.enqueue("math.sqrt", max_retries=3)
    delays = await run_until_final(queue, clock, task_id)
    task = await queue.get_task(task_id)
    assert task is not None and task.status is TaskStatus.FAILED
    assert task.attempts == 4
    assert delays == [1.0, 2.0, 4.0]
    assert task.error is not None and task.error.retry_count == 3 and not task.error.can_retry()


async def test_max_retries_zero_fails_on_first_error(queue: AsyncTaskQueue) -> None:
    task_id = await queue.enqueue("math.sqrt", max_retries=0)
    task = await queue.dequeue()
    assert task is not None
    assert await queue.fail_task(task_id, "boom", task=task) is TaskStatus.FAILED


async def test_a_retry_waits_for_its_backoff(queue: AsyncTaskQueue, clock: FakeClock) -> None:
    await queue.enqueue("math.sqrt")
    task = await queue.dequeue()
    assert task is not None
    await queue.fail_task(task.id, "boom", task=task)
    assert await queue.dequeue() is None
    clock.now += 1.0
    assert await queue.dequeue() is not None


async def test_import_errors_are_not_retried(queue: AsyncTaskQueue) -> None:
    await queue.enqueue("math.sqrt", max_retries=5)
    task = await queue.dequeue()
    assert task is not None
    settlement = queue.settlement(task, failure(ErrorKind.IMPORT, retryable=False))
    assert settlement.status is TaskStatus.FAILED


async def test_aborted_attempts_are_requeued_uncharged(queue: AsyncTaskQueue) -> None:
    await queue.enqueue("math.sqrt", max_retries=0)
    task = await queue.dequeue()
    assert task is not None
    settlement = queue.settlement(task, Outcome(OutcomeKind.ABORTED))
    assert settlement.status is TaskStatus.PENDING and settlement.uncharge
    await queue.storage.settle([settlement])
    again = await queue.dequeue()
    assert again is not None and again.attempts == 1  # the aborted attempt was given back


def crash() -> Outcome:
    err = TaskError("WorkerCrashed", "killed by SIGSEGV", kind=ErrorKind.CRASH.value)
    return Outcome(OutcomeKind.CRASHED, error=err)


async def settle_next(queue: AsyncTaskQueue, clock: FakeClock, outcome: Outcome) -> TaskStatus:
    """Claim the next task, settle it with ``outcome``; advance past any backoff."""
    clock.now += 120
    task = await queue.dequeue()
    assert task is not None
    settlement = queue.settlement(task, outcome)
    await queue.storage.settle([settlement])
    return settlement.status


async def test_a_poison_task_is_dead_after_exactly_max_crashes_starts(
    queue: AsyncTaskQueue, clock: FakeClock
) -> None:
    task_id = await queue.enqueue("math.sqrt", max_retries=0)  # crashes have their own budget
    statuses = [await settle_next(queue, clock, crash()) for _ in range(3)]
    assert statuses == [TaskStatus.PENDING, TaskStatus.PENDING, TaskStatus.DEAD]
    task = await queue.get_task(task_id)
    assert task is not None and task.attempts == 3 and task.crashes == 3
    assert [e.error_type for e in task.history] == ["WorkerCrashed"] * 3
    assert task.error is not None and "quarantined after 3 starts" in task.error.message
    clock.now += 1000
    assert await queue.dequeue() is None  # never started again


async def test_crashes_do_not_spend_the_exception_retry_budget(
    queue: AsyncTaskQueue, clock: FakeClock
) -> None:
    task_id = await queue.enqueue("math.sqrt", max_retries=1)
    assert await settle_next(queue, clock, crash()) is TaskStatus.PENDING
    assert await settle_next(queue, clock, failure()) is TaskStatus.PENDING  # 1 retry left
    assert await settle_next(queue, clock, failure()) is TaskStatus.FAILED
    task = await queue.get_task(task_id)
    assert task is not None and (task.attempts, task.crashes) == (3, 1)
    assert len(task.history) == 3


async def test_lost_lease_is_charged_to_the_crash_budget(
    queue: AsyncTaskQueue, clock: FakeClock
) -> None:
    await queue.enqueue("math.sqrt", max_retries=5)
    for expected in (TaskStatus.PENDING, TaskStatus.PENDING, TaskStatus.DEAD):
        clock.now += 120
        task = await queue.dequeue()
        assert task is not None
        settlement = queue.lost_settlement(task)
        assert settlement.crashed and settlement.status is expected
        assert settlement.error is not None and settlement.error.error_type == "WorkerLost"
        await queue.storage.settle([settlement])


async def test_a_cancelled_kill_settles_cancelled_and_is_never_retried(
    queue: AsyncTaskQueue,
) -> None:
    await queue.enqueue("math.sqrt", max_retries=5)
    task = await queue.dequeue()
    assert task is not None
    err = TaskError("Cancelled", "cancelled while running", kind=ErrorKind.CANCELLED.value)
    settlement = queue.settlement(task, Outcome(OutcomeKind.ABORTED, error=err))
    assert settlement.status is TaskStatus.CANCELLED and not settlement.uncharge


async def test_interval_task_schedules_its_next_run_on_the_original_cadence(
    queue: AsyncTaskQueue, clock: FakeClock
) -> None:
    first_id = await queue.enqueue("math.sqrt", interval=timedelta(seconds=10))
    task = await queue.dequeue()
    assert task is not None
    clock.now += 3
    await queue.complete_task(task.id, 1.0, task=task)
    stats = await queue.stats()
    assert (stats.completed, stats.pending, stats.due) == (1, 1, 0)
    clock.now += 7
    nxt = await queue.dequeue()
    assert nxt is not None and nxt.id != first_id and nxt.interval == 10.0
    assert nxt.eta == task.eta + 10


async def test_interval_skips_missed_slots_after_downtime(
    queue: AsyncTaskQueue, clock: FakeClock
) -> None:
    await queue.enqueue("math.sqrt", interval=10)
    task = await queue.dequeue()
    assert task is not None
    clock.now += 35  # three slots missed while nothing ran
    settlement = queue.settlement(task, Outcome(OutcomeKind.SUCCEEDED, b""))
    assert settlement.follow_up is not None
    assert settlement.follow_up.eta == task.eta + 40


async def test_interval_continues_after_a_final_failure(queue: AsyncTaskQueue) -> None:
    await queue.enqueue("math.sqrt", interval=60, max_retries=0)
    task = await queue.dequeue()
    assert task is not None
    settlement = queue.settlement(task, failure())
    assert settlement.status is TaskStatus.FAILED and settlement.follow_up is not None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"timeout": -1}, "timeout"),
        ({"timeout": float("nan")}, "timeout"),
        ({"max_retries": -1}, "max_retries"),
        ({"max_retries": 1.5}, "max_retries"),
        ({"eta": "tomorrow"}, "eta"),
        ({"eta": 12345}, "eta"),
        ({"interval": 0}, "interval"),
        ({"interval": "hourly"}, "interval"),
        ({"queue": ""}, "queue"),
        ({"priority": "high"}, "priority"),
    ],
)
def test_bad_options_are_rejected_at_enqueue(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_task("math.sqrt", **options)  # type: ignore[arg-type]


def test_eta_accepts_datetime_and_timedelta() -> None:
    now = 1_000.0
    assert build_task("m.f", eta=timedelta(seconds=5), now=now).eta == 1_005.0
    when = datetime(2030, 1, 1, 12, 0, 0)
    assert build_task("m.f", eta=when, now=now).eta == when.timestamp()


def test_unpicklable_argument_is_named_and_nothing_is_built() -> None:
    import threading

    with pytest.raises(SerializationError, match=r"argument 0 \(a lock\)"):
        build_task(print, [threading.Lock()])


def test_non_callable_target_is_rejected() -> None:
    with pytest.raises(SerializationError, match="expected a callable or a dotted path"):
        build_task(42)  # type: ignore[arg-type]
