"""Claims carried by outcomes (SQLite): a supervisor draining short tasks stores their
outcomes and claims its next tasks in one transaction. Every task still runs once, and
``process_tasks(limit=)`` still claims no more than its limit and leaves nothing held; an
outcome carries no claim once a claim has found the queue empty."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from omniq_mp import AsyncOmniQ, Settings
from omniq_mp.models import Settlement, Task
from omniq_mp.storage.sqlite import SQLiteStorage

pytestmark = pytest.mark.process


class CountingSQLite(SQLiteStorage):
    """Counts the claims made alone and those carried by outcomes, and their tasks."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.alone: list[int] = []
        self.carried: list[int] = []

    async def claim(self, *args: Any, **kwargs: Any) -> list[Task]:
        tasks = await super().claim(*args, **kwargs)
        self.alone.append(len(tasks))
        return tasks

    async def settle_and_claim(
        self, settlements: Sequence[Settlement], *args: Any, **kwargs: Any
    ) -> tuple[list[bool], list[Task]]:
        applied, tasks = await super().settle_and_claim(settlements, *args, **kwargs)
        self.carried.append(len(tasks))
        return applied, tasks


def noop() -> int:
    return 1


async def drain(tmp_path: Path, queued: int, limit: int) -> tuple[CountingSQLite, Any]:
    storage = CountingSQLite(tmp_path / "omniq.db")
    q = AsyncOmniQ(Settings(base_dir=tmp_path, procs=2), storage=storage)
    await q.open()
    try:
        for start in range(0, queued, 500):
            await q.enqueue_tasks([q.build(noop) for _ in range(min(500, queued - start))])
        async with q.worker_pool() as workers:
            assert await workers.process_tasks(limit=limit) == limit
            assert not workers._held  # nothing claimed is kept past the call
        return storage, await q.stats()
    finally:
        await q.close()


async def test_a_drain_carries_claims_in_its_settles_and_runs_every_task_once(
    tmp_path: Path,
) -> None:
    storage, stats = await drain(tmp_path, queued=1500, limit=1500)
    assert stats.completed == 1500
    assert (stats.pending, stats.running, stats.failed) == (0, 0, 0)
    assert sum(storage.carried) > 0, "no claim was carried by outcomes"
    assert sum(storage.alone) + sum(storage.carried) == 1500  # each task claimed once


async def test_a_limit_holds_with_carried_claims(tmp_path: Path) -> None:
    storage, stats = await drain(tmp_path, queued=1500, limit=600)
    assert sum(storage.carried) > 0, "no claim was carried by outcomes"
    assert sum(storage.alone) + sum(storage.carried) == 600  # never past the limit
    assert (stats.completed, stats.pending, stats.running) == (600, 900, 0)


async def test_an_outcome_carries_no_claim_once_a_claim_found_the_queue_empty(
    tmp_path: Path,
) -> None:
    # Tasks one at a time (a notebook's enqueue and get_result): each claim comes back
    # short, so each outcome commits alone instead of first claiming nothing.
    storage = CountingSQLite(tmp_path / "omniq.db")
    q = AsyncOmniQ(Settings(base_dir=tmp_path, procs=2), storage=storage)
    await q.open()
    try:
        async with q.worker_pool() as workers:
            job = asyncio.create_task(workers.process_tasks(limit=5))
            for _ in range(5):
                assert await q.get_result(await q.enqueue(noop), timeout=30) == 1
            assert await job == 5
    finally:
        await q.close()
    assert sum(storage.alone) == 5
    assert storage.carried == []
