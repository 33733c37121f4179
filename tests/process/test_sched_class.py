"""Worker processes run in Linux's SCHED_BATCH class, so that a RUN frame waking one
never preempts the supervisor's loop (see omniq_mp.sched_class); the supervisor's own
loop thread keeps the default class."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from omniq_mp import AsyncOmniQ, Settings
from tests.process import tasks
from tests.process.conftest import MakePool
from tests.process.support import run_task, value

pytestmark = [
    pytest.mark.process,
    pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="Linux scheduling classes only"),
]


async def test_a_task_runs_in_the_batch_class(make_pool: MakePool, start_method: str) -> None:
    pool = await make_pool(1, start_method)
    assert value(await run_task(pool, tasks.scheduling_policy)) == os.SCHED_BATCH


async def test_a_process_the_task_starts_inherits_the_class(make_pool: MakePool) -> None:
    pool = await make_pool(1)
    assert value(await run_task(pool, tasks.child_scheduling_policy)) == os.SCHED_BATCH


async def test_the_supervisor_loop_keeps_its_class(tmp_path: Path) -> None:
    before = os.sched_getscheduler(0)
    q = AsyncOmniQ(Settings(base_dir=tmp_path, procs=1))
    try:
        task_id = await q.enqueue(tasks.scheduling_policy)
        async with q.worker_pool() as workers:
            await workers.process_tasks(limit=1)
        assert await q.get_result(task_id, timeout=0) == os.SCHED_BATCH
        assert os.sched_getscheduler(0) == before
    finally:
        await q.close()
