"""A worker killed at its task's timeout is replaced only after the task's outcome has
gone to the store: starting a process blocks the supervisor's loop for milliseconds, and
the outcome, not the new process, is what a client waits for."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest

from omniq_mp import AsyncOmniQ, Settings, TaskStatus
from omniq_mp.models import Settlement
from omniq_mp.pool import WorkerProcess
from omniq_mp.storage.sqlite import SQLiteStorage
from tests.process import tasks
from tests.waiting import until

pytestmark = pytest.mark.process


async def test_a_timed_out_tasks_outcome_is_stored_before_its_worker_is_replaced(
    tmp_path: Path,
) -> None:
    steps: list[str] = []
    storage = SQLiteStorage(tmp_path / "omniq.db")
    settle = storage.settle

    async def noted_settle(settlements: Sequence[Settlement]) -> list[bool]:
        steps.append("outcome stored")
        return await settle(settlements)

    storage.settle = noted_settle  # type: ignore[method-assign]
    q = AsyncOmniQ(Settings(base_dir=tmp_path, procs=1), storage=storage)
    await q.open()
    try:
        async with q.worker_pool() as workers:
            spawn = workers.pool._spawn

            async def noted_spawn(slot: int) -> WorkerProcess:
                steps.append("replacement started")
                return await spawn(slot)

            workers.pool._spawn = noted_spawn  # type: ignore[method-assign]
            task_id = await q.enqueue(tasks.sleep_for, 60, timeout=0.3, max_retries=0)
            assert await asyncio.wait_for(workers.process_tasks(limit=1), 30) == 1

            async def replaced() -> bool:  # once the outcome is on its way
                return "replacement started" in steps

            await until(replaced, 3, "the timed-out worker's replacement to start")
        task = await q.get_task(task_id)
    finally:
        await q.close()
    assert task is not None and task.status is TaskStatus.FAILED
    assert steps[:2] == ["outcome stored", "replacement started"]
