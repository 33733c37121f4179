"""How many tasks a supervisor claims beyond its workers (Pacer.prefetch)."""

from __future__ import annotations

import pytest

from omniq_mp.config import Settings
from omniq_mp.models import Task
from omniq_mp.queue import AsyncTaskQueue
from omniq_mp.storage.memory import MemoryStorage
from omniq_mp.worker import AsyncWorkerPool, Pacer


def paced(task_s: float, claim_s: float, procs: int = 2, limit: int = 32) -> Pacer:
    pacer = Pacer(procs, limit, ahead_below=0.05)
    pacer.ran(task_s)
    pacer.claimed(claim_s)
    return pacer


def test_before_anything_is_measured_one_task_per_worker() -> None:
    assert Pacer(4, 32, ahead_below=0.05).prefetch() == 4
    assert Pacer(4, 2).prefetch() == 2  # never past the limit


def test_long_tasks_get_one_per_worker_so_other_supervisors_share_the_rest() -> None:
    assert paced(task_s=1.0, claim_s=0.001).prefetch() == 2
    assert not paced(task_s=1.0, claim_s=0.001).send_ahead()


def test_no_op_tasks_get_the_limit() -> None:
    assert paced(task_s=0.0001, claim_s=0.001).prefetch() == 32


def test_short_tasks_buffer_a_few_milliseconds_of_work_beyond_the_tasks_sent_ahead() -> None:
    # 2 ms tasks on 2 workers: 20 ms of work (20 tasks), plus the 2 sent ahead. Holding
    # only the 2 sent ahead left workers idle half the time whenever a claim waited
    # behind an outcome's fsync (bench/shared_sqlite.py's mix ran at half of ideal).
    pacer = paced(task_s=0.002, claim_s=0.0005)
    assert pacer.send_ahead()
    assert pacer.prefetch() == 20 + 2


def test_tasks_far_under_a_millisecond_are_sent_three_ahead_per_worker() -> None:
    # Each wake-up of a worker then runs several: 20,000 no-ops drained 15% faster.
    assert paced(task_s=0.00005, claim_s=0.001).ahead() == 3
    assert paced(task_s=0.0004, claim_s=0.001).ahead() == 3
    assert paced(task_s=0.0006, claim_s=0.001).ahead() == 2
    assert paced(task_s=0.002, claim_s=0.001).ahead() == 1  # outlasts the turnaround
    assert paced(task_s=0.040, claim_s=0.001).ahead() == 1
    assert paced(task_s=0.060, claim_s=0.001).ahead() == 0  # over ahead_below: none
    assert Pacer(2, 32, ahead_below=0.05).ahead() == 0  # nothing measured yet


def test_a_task_is_stalled_after_ten_average_tasks_and_never_under_100_ms() -> None:
    assert Pacer(2, 32, ahead_below=0.05).stalled_after() == 0.1  # nothing measured yet
    assert paced(task_s=0.0001, claim_s=0.001).stalled_after() == 0.1
    assert paced(task_s=0.04, claim_s=0.001).stalled_after() == pytest.approx(0.4)


def test_send_ahead_below_zero_sends_nothing_ahead() -> None:
    pacer = Pacer(2, 32, ahead_below=0.0)
    pacer.ran(0.00005)
    assert pacer.ahead() == 0 and not pacer.send_ahead()


def test_tasks_sent_ahead_come_on_top_of_the_buffer() -> None:
    # 0.5 ms tasks on 2 workers: 20 ms of work is 80 tasks, plus 2 ahead on each worker.
    assert paced(task_s=0.0005, claim_s=0.0005, limit=128).prefetch() == 80 + 2 * 2


def test_a_slow_claim_raises_the_prefetch_up_to_the_limit() -> None:
    assert paced(task_s=0.010, claim_s=0.001).prefetch() == 4 + 2
    assert paced(task_s=0.010, claim_s=0.020).prefetch() == 8 + 2
    assert paced(task_s=0.010, claim_s=0.5).prefetch() == 32


class BusyPool:
    """What ``_claim_size`` asks of the process pool: workers idle, workers healthy."""

    def __init__(self, idle: int) -> None:
        self._idle = idle

    def idle(self) -> int:
        return self._idle

    def healthy(self) -> int:
        return 2


def supervisor(held: int, idle_workers: int) -> AsyncWorkerPool:
    """A supervisor (never started) on 2 workers holding ``held`` tasks of 10 ms, whose
    prefetch makes a target of 8 in flight."""
    workers = AsyncWorkerPool(
        AsyncTaskQueue(MemoryStorage()), Settings(backend="memory", procs=2, prefetch=32)
    )
    workers.pool = BusyPool(idle_workers)  # type: ignore[assignment]
    workers._pacer.ran(0.010)
    workers._pacer.claimed(0.001)
    assert workers._pacer.prefetch() == 6  # target 2 + 6 = 8
    for n in range(held):
        workers._held[f"t{n}"] = Task(func_name="f", payload=b"")
    return workers


def test_claims_refill_by_halves_while_every_worker_has_work() -> None:
    # One claim per finished task cost a commit and its wake-ups per task (579 claims for
    # 600 tasks of 10 ms); a claim now waits until half the target is missing.
    assert supervisor(held=5, idle_workers=0)._claim_size() == 0
    assert supervisor(held=4, idle_workers=0)._claim_size() == 4
    assert supervisor(held=7, idle_workers=1)._claim_size() == 1  # a worker waits


def test_outcomes_stored_in_the_claims_transaction_no_longer_count_against_it() -> None:
    # A claim carried in a settle's transaction: the tasks whose outcomes that commit
    # stores are gone from the supervisor once it lands.
    assert supervisor(held=8, idle_workers=0)._claim_size(settling=4) == 4
    assert supervisor(held=8, idle_workers=0)._claim_size(settling=3) == 0  # not half yet


def test_claims_under_way_count_against_the_target_and_the_limit() -> None:
    # A claim alone and one carried by outcomes may be under way at once: neither may
    # take what the other asked for.
    workers = supervisor(held=2, idle_workers=1)
    assert workers._claim_size() == 6
    workers._asked = 6
    assert workers._claim_size() == 0
    workers._asked = 0
    workers._claim_cap, workers._claimed_count = 10, 7  # process_tasks(limit=10)
    assert workers._claim_size() == 3
    workers._asked = 2
    assert workers._claim_size() == 1


def test_large_arguments_bound_the_prefetch_and_the_tasks_sent_ahead_by_bytes() -> None:
    # A claimed task's payload is in the supervisor's memory until a worker takes it:
    # no-op tasks of 16 MiB arguments were claimed 128 at a time.
    pacer = paced(task_s=0.0001, claim_s=0.001, limit=128)
    pacer.sized(1000)
    assert (pacer.prefetch(), pacer.ahead()) == (128, 3)  # small ones: no bound felt
    pacer = paced(task_s=0.0001, claim_s=0.001, limit=128)
    pacer.sized(16 * 2**20)
    assert Pacer.BUFFER_BYTES == 64 * 2**20
    assert (pacer.prefetch(), pacer.ahead()) == (4, 2)
    pacer = paced(task_s=0.0001, claim_s=0.001, limit=128)
    pacer.sized(100 * 2**20)
    assert (pacer.prefetch(), pacer.ahead()) == (0, 0)  # one per worker, no more


def test_before_tasks_are_timed_a_measured_size_already_bounds_the_prefetch() -> None:
    pacer = Pacer(4, 32, ahead_below=0.05)
    pacer.sized(32 * 2**20)
    assert pacer.prefetch() == 2
