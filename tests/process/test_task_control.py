"""Task control with real processes: cancel a running GIL-holding task, memory limits,
poison-task quarantine, and the per-child memory recycle."""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import pytest

from omniq_mp import OmniQ, Settings, TaskCancelledError, TaskStatus
from omniq_mp.errors import TaskDeadError, TaskFailedError
from tests.process import tasks
from tests.waiting import wait_for

pytestmark = pytest.mark.process

KILL_GRACE = 0.5


def settings(tmp_path: Path, **overrides: object) -> Settings:
    return Settings(base_dir=tmp_path, procs=2, kill_grace=KILL_GRACE, **overrides)  # type: ignore[arg-type]


def test_cancel_kills_a_running_task_that_holds_the_gil(tmp_path: Path) -> None:
    with OmniQ(settings(tmp_path)) as q:
        task_id = q.enqueue(tasks.catastrophic_regex, max_retries=3)
        other = q.enqueue(tasks.add, 2, 3)
        wait_for(lambda: q.get_task(task_id).status is TaskStatus.RUNNING, 30, "start")  # type: ignore[union-attr]
        time.sleep(0.2)  # let the regex get deep into C code, holding the GIL
        running = q.get_task(task_id)
        assert running is not None and running.worker_id is not None
        pids = {p.pid for p in psutil.Process().children(recursive=True)}
        began = time.monotonic()
        assert q.cancel(task_id) is True
        with pytest.raises(TaskCancelledError):
            q.get_result(task_id, timeout=10)
        assert time.monotonic() - began < KILL_GRACE + 0.25
        task = q.get_task(task_id)
        assert task is not None and task.status is TaskStatus.CANCELLED and task.attempts == 1
        assert q.get_result(other, timeout=30) == 5
        # The killed worker's process is gone (the pool replaced it).
        killed = pids - {p.pid for p in psutil.Process().children(recursive=True)}
        assert killed, "no worker process was killed"


def test_cancelling_a_finished_task_is_a_plain_no(tmp_path: Path) -> None:
    with OmniQ(settings(tmp_path)) as q:
        task_id = q.enqueue(tasks.add, 1, 1)
        assert q.get_result(task_id, timeout=30) == 2
        assert q.cancel(task_id) is False
        assert q.get_task(task_id).status is TaskStatus.COMPLETED  # type: ignore[union-attr]


def test_a_task_past_its_memory_limit_is_killed_with_a_clear_error(tmp_path: Path) -> None:
    with OmniQ(settings(tmp_path, max_crashes=1)) as q:
        hog = q.enqueue(tasks.allocate_mib, 400, max_memory="150MB")
        fine = q.enqueue(tasks.allocate_mib, 20, max_memory="150MB")
        with pytest.raises(TaskFailedError) as info:
            q.get_result(hog, timeout=60)
        assert info.value.error_type == "MemoryLimitExceeded"
        assert "exceeded its memory limit of 143.1 MiB by" in info.value.message
        assert q.get_result(fine, timeout=30) == 20


def test_a_poison_task_is_dead_after_three_starts_while_others_flow(tmp_path: Path) -> None:
    with OmniQ(settings(tmp_path, retry_delay=0.05)) as q:
        poison = q.enqueue(tasks.segfault, max_retries=10)
        others = [q.enqueue(tasks.add, i, i) for i in range(20)]
        with pytest.raises(TaskDeadError) as info:
            q.get_result(poison, timeout=60)
        assert len(info.value.history) == 3
        assert all("SIGSEGV" in line for line in info.value.history)
        task = q.get_task(poison)
        assert task is not None and task.attempts == 3 and task.crashes == 3
        assert [q.get_result(t, timeout=30) for t in others] == [2 * i for i in range(20)]
        assert [t.id for t in q.dead()] == [poison]
        assert q.retry([poison]) == [poison]  # re-queued with a fresh crash budget
        revived = q.get_task(poison)
        assert revived is not None and revived.crashes == 0 and revived.history


def test_a_unique_key_enqueued_twice_runs_once(tmp_path: Path) -> None:
    with OmniQ(settings(tmp_path)) as q:
        first = q.enqueue(tasks.sleep_for, 0.3, key="report-2026-11-22")
        second = q.enqueue(tasks.sleep_for, 0.3, key="report-2026-11-22")
        assert first == second
        q.get_result(first, timeout=30)
        assert q.stats().completed == 1
