"""Statistics read from the store by another process match what happened."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path

import pytest

from omniq_mp import OmniQ, Settings
from tests.e2e.conftest import Cli, start_workers
from tests.waiting import wait_for

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
