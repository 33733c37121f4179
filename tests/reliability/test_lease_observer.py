"""Leases in the supervisor, step by step, with a controlled monotonic clock and no
processes: expiry judged on the observer's monotonic clock (design rule 4.3, matrix row
33) by ``recover_expired`` of a supervisor whose wall clock is an hour off, facing a holder
that renews or stops; and a task claimed again while its old attempt still dies here.

The real-process version (supervisors with jumping clocks on SQLite and file stores) is
test_fault_matrix.py::test_wall_clock_jumps_neither_steal_live_leases_nor_delay_recovery.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

import omniq_mp.worker as worker_module
from omniq_mp.config import Settings
from omniq_mp.models import Task, TaskStatus
from omniq_mp.queue import AsyncTaskQueue, build_task
from omniq_mp.storage.memory import MemoryStorage
from omniq_mp.worker import AsyncWorkerPool

TTL = 2.0


class Clocks:
    """Stands in for the ``time`` module inside worker.py: a monotonic clock the test
    moves by hand; the wall clock stays real."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return time.time()

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clocks(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clocks]:
    fake = Clocks()
    monkeypatch.setattr(worker_module, "time", fake)
    yield fake


def observer(storage: MemoryStorage, wall_offset: float) -> AsyncWorkerPool:
    """A supervisor (never started: no processes) whose wall clock is off by ``wall_offset``."""
    queue = AsyncTaskQueue(storage, clock=lambda: time.time() + wall_offset)
    return AsyncWorkerPool(queue, Settings(backend="memory", procs=1, lease_ttl=TTL))


async def held_task(storage: MemoryStorage) -> Task:
    """A task claimed by another (honest) holder."""
    await storage.enqueue([build_task("math.sqrt", (4,))])
    [task] = await AsyncTaskQueue(storage).claim(["default"], 1, "holder", TTL)
    return task


async def renew(storage: MemoryStorage, task: Task, wall: float) -> None:
    assert await storage.extend_leases({task.id: task.lease_token or ""}, wall + TTL) == set()


@pytest.mark.parametrize("offset", [3600.0, -3600.0, 0.0], ids=["plus-1h", "minus-1h", "honest"])
async def test_a_renewed_lease_is_never_taken_whatever_the_observers_wall_clock(
    clocks: Clocks, offset: float
) -> None:
    storage = MemoryStorage()
    task = await held_task(storage)
    watcher = observer(storage, offset)
    for _ in range(20):  # ten seconds of renewals every lease_ttl/4
        assert await watcher.recover_expired() == 0
        clocks.advance(TTL / 4)
        await renew(storage, task, time.time())
    got = await storage.get(task.id)
    assert got is not None and got.status is TaskStatus.RUNNING


@pytest.mark.parametrize("holder_offset", [0.0, -3600.0], ids=["clock-stands-still", "minus-1h"])
async def test_a_holder_whose_clock_stands_still_or_jumps_back_still_renews(
    clocks: Clocks, holder_offset: float
) -> None:
    storage = MemoryStorage()
    task = await held_task(storage)
    frozen_wall = time.time() + holder_offset
    watcher = observer(storage, 0.0)
    for _ in range(20):  # every renewal writes the same (or an hour-old) lease end
        assert await watcher.recover_expired() == 0
        clocks.advance(TTL / 4)
        await renew(storage, task, frozen_wall)


async def test_a_silent_lease_is_recovered_after_lease_ttl_of_the_observers_clock(
    clocks: Clocks,
) -> None:
    storage = MemoryStorage()
    task = await held_task(storage)
    watcher = observer(storage, 3600.0)  # an hour ahead: the old rule recovered at once
    assert await watcher.recover_expired() == 0  # first seen: its clock starts now
    clocks.advance(TTL - 0.01)
    assert await watcher.recover_expired() == 0
    clocks.advance(0.02)
    assert await watcher.recover_expired() == 1
    got = await storage.get(task.id)
    assert got is not None and got.status is TaskStatus.PENDING and got.crashes == 1


async def test_a_renewal_restarts_the_observers_count(clocks: Clocks) -> None:
    storage = MemoryStorage()
    task = await held_task(storage)
    watcher = observer(storage, 0.0)
    assert await watcher.recover_expired() == 0
    clocks.advance(TTL - 0.1)
    await renew(storage, task, time.time())
    assert await watcher.recover_expired() == 0  # changed: counted from now
    clocks.advance(TTL - 0.1)
    assert await watcher.recover_expired() == 0
    clocks.advance(0.2)
    assert await watcher.recover_expired() == 1


async def test_the_next_scan_comes_when_the_oldest_silent_lease_comes_of_age(
    clocks: Clocks,
) -> None:
    storage = MemoryStorage()
    await held_task(storage)
    watcher = observer(storage, 0.0)
    period = TTL / 4
    assert watcher._next_scan(period) == period  # nothing watched yet
    await watcher.recover_expired()
    clocks.advance(TTL - 0.2)
    assert watcher._next_scan(period) == pytest.approx(0.201)
    clocks.advance(0.3)  # of age, judged by the last scan (its recovery failed, say)
    assert watcher._next_scan(period) == period  # retried at the period, no hot loop


# -- a task claimed again while its older attempt still dies here -------------------------


class FakePool:
    """What ``_dispatch`` asks of the process pool: which task ids its workers hold (running
    or sent ahead), an idle worker."""

    def __init__(self, running: set[str]) -> None:
        self.busy = running
        self.acquired = 0

    def is_held(self, task_id: str) -> bool:
        return task_id in self.busy

    def try_acquire(self) -> object | None:
        self.acquired += 1
        return object()

    def abort(self, *args: object, **kwargs: object) -> bool:
        return False


async def test_a_task_claimed_again_waits_for_its_dying_attempt_and_stays_held(
    clocks: Clocks,
) -> None:
    """Found by the chaos run: a thawed supervisor claimed again a task whose lease had
    lapsed while its old attempt was still being killed here; it started the new attempt
    beside the old one, and settling the old one dropped the new claim from the leases
    it renews. The new attempt must wait, and stay held."""
    storage = MemoryStorage()
    old = await held_task(storage)
    new = Task(**{**old.__dict__, "lease_token": "newer"})
    workers = observer(storage, 0.0)
    fake = FakePool(running={old.id})
    workers.pool = fake  # type: ignore[assignment]
    workers._held[new.id] = new
    workers._confirmed[new.id] = clocks.monotonic()
    workers._ready.append(new)
    workers._dispatch()
    assert fake.acquired == 0 and list(workers._ready) == [new]  # not beside the old one
    await workers._settle([(old, workers.queue.release_settlement(old))])  # the old one ends
    assert workers._held[new.id] is new  # the newer claim is still renewed
