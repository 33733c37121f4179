"""Statistics read from the store by another process match what happened."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import timedelta
from pathlib import Path

import pytest

import omniq_mp.worker
from omniq_mp import AsyncOmniQ, OmniQ, Settings, TaskStatus
from tests.e2e.conftest import Cli, start_workers
from tests.waiting import until, wait_for

pytestmark = pytest.mark.e2e


def test_stats_after_a_mixed_run_match_the_store(tmp_path: Path, omniq: Cli) -> None:
    store = tmp_path / "store"
    q = OmniQ(Settings(base_dir=store))
    try:
        for n in range(5):
            q.enqueue(pow, 2, n, queue="fast")
        q.enqueue("math.sqrt", -1, max_retries=0, queue="fast")
        q.enqueue(pow, 2, 2, queue="later", eta=timedelta(hours=1))
        q.enqueue(pow, 2, 3, queue="later")
        done = omniq("workers", "--procs", "1", "--burst", "--queues", "fast")
        assert done.returncode == 0, done.stderr
        fast = q.get_queue_stats("fast")
        assert (fast.depth, fast.running, fast.completed, fast.failed) == (0, 0, 5, 1)
        assert fast.throughput == 5  # all completed within the last minute
        later = q.get_queue_stats("later")
        assert (later.depth, later.scheduled, later.completed) == (1, 1, 0)
        assert sorted(q.get_all_queue_stats()) == ["fast", "later"]
        total = q.get_global_stats()
        assert (total.queues, total.completed, total.failed, total.depth) == (2, 5, 1, 1)
    finally:
        q.close()
    printed = json.loads(omniq("stats", "--json").stdout)
    assert printed["queues"]["fast"]["completed"] == 5
    assert printed["global"]["supervisors"] == 0


def test_worker_stats_show_the_running_task_of_each_process(tmp_path: Path) -> None:
    store = tmp_path / "store"
    q = OmniQ(Settings(base_dir=store))
    workers = start_workers(store, "--procs", "2")
    try:
        task_id = q.enqueue(time.sleep, 30)

        def busy() -> bool:
            stats = q.get_worker_stats()
            return bool(stats) and any(c.task_id == task_id for c in stats[0].children)

        wait_for(busy, 30, "a heartbeat showing the running task")
        [supervisor] = q.get_worker_stats()
        [child] = [c for c in supervisor.children if c.task_id == task_id]
        assert supervisor.procs == 2 and supervisor.active == 1
        assert child.pid > 0 and child.rss > 1_000_000 and child.running_for >= 0
        assert q.get_global_stats().worker_processes == 2
        q.cancel(task_id)
    finally:
        workers.terminate()
        workers.communicate(timeout=30)
        q.close()


async def test_a_stall_of_the_supervisors_loop_shows_in_its_next_heartbeat_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The test waits for three beats: 0.5 s apart, not the default 2 s. (A beat that comes
    # due during the stall may run before the lag probe wakes; the read counts the stall.)
    monkeypatch.setattr(omniq_mp.worker, "HEARTBEAT_INTERVAL", 0.5)
    q = AsyncOmniQ(Settings(base_dir=tmp_path / "store", procs=1, event_storage_type="none"))
    await q.open()
    try:
        async with q.worker_pool(concurrency=1) as workers:

            async def lag_in_next_beat() -> float:
                since = time.time()
                while True:  # the heartbeat loop's own beat, every HEARTBEAT_INTERVAL
                    beats = [w for w in await q.get_worker_stats() if w.last_heartbeat > since]
                    if beats:
                        return beats[0].loop_lag
                    await asyncio.sleep(0.05)

            # A held task: the probe samples every 0.1 s (idle, every second).
            held = await q.enqueue(time.sleep, 60)
            processing = asyncio.create_task(workers.process_tasks(limit=1))

            async def running() -> bool:
                task = await q.get_task(held)
                return task is not None and task.status is TaskStatus.RUNNING

            await until(running, 30, "the task to start")
            await lag_in_next_beat()  # past start-up
            time.sleep(0.4)  # blocks the supervisor's loop: this test shares it
            assert await lag_in_next_beat() >= 0.3
            assert await lag_in_next_beat() < 0.3  # reported once, then reset
            assert workers.loop_lag.overall >= 0.3
            await q.cancel(held)
            assert await processing == 1  # the cancelled task, settled
    finally:
        await q.close()
