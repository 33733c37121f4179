"""``omniq-mp cancel / dead / retry / purge`` against a real store and real workers."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from omniq_mp import OmniQ, Settings, TaskStatus
from tests.e2e.conftest import Cli, start_workers
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("command", [("cancel", "nope"), ("retry", "nope")])
def test_unknown_ids_are_one_line_and_exit_1(omniq: Cli, command: tuple[str, ...]) -> None:
    done = omniq(*command)
    assert done.returncode == 1
    assert done.stderr.strip() == "error: no such task: nope"


@pytest.mark.parametrize(
    "args",
    [
        ("retry",),
        ("retry", "abc", "--all"),
        ("purge",),
        ("purge", "--older-than", "soon"),
        ("purge", "--older-than", "7d", "--status", "pending"),
        ("enqueue", "math.sqrt", "--max-memory", "lots"),
        ("enqueue", "math.sqrt", "--priority", "high"),
    ],
)
def test_control_usage_errors_exit_2(omniq: Cli, args: tuple[str, ...]) -> None:
    done = omniq(*args)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr


def test_cancel_from_another_process_kills_the_running_task(tmp_path: Path, omniq: Cli) -> None:
    store = tmp_path / "store"
    q = OmniQ(Settings(base_dir=store))
    workers = start_workers(store, "--procs", "1")
    try:
        task_id = q.enqueue(time.sleep, 60, max_retries=5)
        wait_for(lambda: q.get_task(task_id).status is TaskStatus.RUNNING, 30, "start")  # type: ignore[union-attr]
        done = omniq("cancel", task_id)
        assert done.returncode == 0 and "is being killed" in done.stdout
        wait_for(lambda: q.get_task(task_id).status is TaskStatus.CANCELLED, 5, "cancel")  # type: ignore[union-attr]
        again = omniq("cancel", task_id)
        assert again.returncode == 0 and "already finished (CANCELLED)" in again.stdout
        # The worker lives on and takes the next task.
        assert q.get_result(q.enqueue(pow, 2, 5), timeout=30) == 32
    finally:
        workers.terminate()
        workers.communicate(timeout=30)
        q.close()


def test_dead_lists_poison_tasks_and_retry_requeues_them(tmp_path: Path, omniq: Cli) -> None:
    store = tmp_path / "store"
    q = OmniQ(Settings(base_dir=store))
    try:
        poison = q.enqueue("ctypes.string_at", 0)
        drained = omniq("workers", "--procs", "1", "--burst", OMNIQ_RETRY_DELAY="0.05")
        assert drained.returncode == 0, drained.stderr
        listing = omniq("dead")
        assert poison in listing.stdout and listing.stdout.count("SIGSEGV") == 3
        assert omniq("retry", "--all").stdout.strip() == f"re-queued {poison}"
        task = q.get_task(poison)
        assert task is not None and task.status is TaskStatus.PENDING and task.crashes == 0
        assert omniq("dead").stdout.strip() == "no dead tasks"
    finally:
        q.close()


def test_purge_deletes_old_finished_tasks_only(tmp_path: Path, omniq: Cli) -> None:
    store = tmp_path / "store"
    q = OmniQ(Settings(base_dir=store))
    try:
        done_id = q.enqueue(pow, 2, 3)
        waiting = q.enqueue(pow, 2, 4, eta=__import__("datetime").timedelta(hours=1))
        assert omniq("workers", "--procs", "1", "--burst").returncode == 0
        assert omniq("purge", "--older-than", "1h").stdout.strip() == "purged 0 task(s)"
        time.sleep(1.1)  # the task must be older than the cut-off
        assert omniq("purge", "--older-than", "1s").stdout.strip() == "purged 1 task(s)"
        assert q.get_task(done_id) is None and q.get_task(waiting) is not None
    finally:
        q.close()


def test_periodic_pause_and_resume(omniq: Cli) -> None:
    created = omniq("enqueue", "math.factorial", "5", "--cron", "0 3 * * *", "--tz", "Asia/Tokyo")
    assert created.returncode == 0, created.stderr
    schedule_id = created.stdout.strip()
    assert schedule_id.startswith("sch-")
    listing = omniq("periodic").stdout
    assert schedule_id in listing and "'0 3 * * *' Asia/Tokyo" in listing
    assert "T03:00:00+09:00" in listing  # next run shown in the schedule's own timezone
    assert omniq("pause", schedule_id).stdout.strip() == f"{schedule_id} paused"
    assert "paused" in omniq("periodic").stdout
    assert omniq("resume", schedule_id).stdout.strip() == f"{schedule_id} resumed"
    unknown = omniq("pause", "sch-nope")
    assert unknown.returncode == 1 and unknown.stderr.strip() == "error: no such schedule: sch-nope"
    bad = omniq("enqueue", "math.factorial", "--cron", "* * *")
    assert bad.returncode == 2 and "invalid cron expression" in bad.stderr
