"""The claim loop survives a store that fails for a while (locked, full, unreachable)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path

import pytest

from omniq_mp import AsyncOmniQ, Settings, TaskStatus
from omniq_mp.errors import StorageError
from omniq_mp.models import Task
from omniq_mp.storage.memory import MemoryStorage
from tests.process.support import is_alive, wait_until
from tests.process.tasks import write_pid_then_sleep

pytestmark = pytest.mark.process


class FlakyStorage(MemoryStorage):
    """Fails the first ``failures`` claims, as a database locked by someone else would."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

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
        if self.failures > 0:
            self.failures -= 1
            raise StorageError("database is locked")
        return await super().claim(queues, limit, now, lease_until, worker_id, max_bytes, min_tasks)


async def test_claim_failures_are_retried_not_fatal(tmp_path: Path) -> None:
    storage = FlakyStorage(failures=3)
    q = AsyncOmniQ(Settings(base_dir=tmp_path, procs=1, poll_interval=0.01), storage=storage)
    task_id = await q.enqueue(pow, 3, 4)
    async with q.worker_pool() as workers:
        assert await workers.process_tasks(limit=1) == 1
    assert storage.failures == 0
    assert await q.get_result(task_id, timeout=5) == 81
    await q.close()


class UnreachableForRenewals(MemoryStorage):
    """A store that stops answering lease renewals (a database gone away)."""

    async def extend_leases(self, leases: Mapping[str, str], lease_until: float) -> set[str]:
        raise StorageError("connection lost (127.0.0.1:5432)")


async def test_a_task_whose_lease_cannot_be_renewed_is_stopped_before_it_lapses(
    tmp_path: Path,
) -> None:
    # No other supervisor may ever start a task that still runs here: when renewals keep
    # failing, the task's process is killed at 70% of lease_ttl, before its lease ends.
    lease_ttl = 1.2
    storage = UnreachableForRenewals()
    q = AsyncOmniQ(
        Settings(base_dir=tmp_path, procs=1, lease_ttl=lease_ttl, kill_grace=0.1),
        storage=storage,
    )
    pid_file = tmp_path / "pid"
    task_id = await q.enqueue(write_pid_then_sleep, str(pid_file))
    async with q.worker_pool() as workers:
        claimed = time.monotonic()
        runner = asyncio.create_task(workers.process_tasks())
        await wait_until(pid_file.exists, 10, "the task to start")
        pid = int(pid_file.read_text())
        await wait_until(lambda: not is_alive(pid), 10, f"task process {pid} to be stopped")
        assert time.monotonic() - claimed < lease_ttl  # before its lease could lapse
        workers.request_stop()
        await runner
    task = await q.get_task(task_id)
    assert task is not None and task.status is TaskStatus.PENDING  # back in the queue
    await q.close()


class NextDueNotANumber(MemoryStorage):
    """Answers NaN when asked for the next due time, as a tampered ETA column could."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = asyncio.Event()

    async def next_due(self, queues: Sequence[str], now: float) -> float | None:
        self.asked.set()
        return math.nan


async def test_a_due_time_that_is_not_a_number_does_not_hide_later_etas(tmp_path: Path) -> None:
    # NaN compares false with every time: kept as the next due time, no real ETA could
    # replace it, and an announced task would wait for the minute-long idle poll.
    storage = NextDueNotANumber()
    q = AsyncOmniQ(Settings(base_dir=tmp_path, procs=1, poll_interval=60), storage=storage)
    async with q.worker_pool() as workers:
        runner = asyncio.create_task(workers.process_tasks(limit=1))
        await asyncio.wait_for(storage.asked.wait(), 10)  # idle, and it heard NaN
        task_id = await q.enqueue(pow, 2, 5, eta=timedelta(seconds=0.3))
        assert await asyncio.wait_for(runner, 10) == 1
    assert await q.get_result(task_id, timeout=5) == 32
    await q.close()
