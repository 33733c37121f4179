"""Nothing is lost: a producer process, ``omniq-mp workers`` in another, and signals.

These run real processes end to end: a producer script enqueues lambdas into a SQLite
store, ``omniq-mp workers`` drains it, and the test reads every result back through a
bare ``OmniQ`` (a producer-only client), as a user's notebook would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from omniq_mp import OmniQ, Settings, TaskStatus
from tests.e2e.conftest import cli_env, start_workers
from tests.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PRODUCER = """
import json, sys, time
from omniq_mp import OmniQ
count, pause = int(sys.argv[1]), float(sys.argv[2])
q = OmniQ()
offset = 7
def square_plus(i):
    time.sleep(pause)
    return i * i + offset  # a closure over offset and pause
batch = [q.build(square_plus, i) for i in range(count)]
ids = q.enqueue_tasks(batch)
q.close()
print(json.dumps(ids))
"""


def produce(base_dir: Path, count: int, pause: float) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", PRODUCER, str(count), str(pause)],
        capture_output=True,
        text=True,
        timeout=120,
        env=cli_env(base_dir),
        check=True,
    )
    ids: list[str] = json.loads(done.stdout)
    return ids


def assert_all_results(base_dir: Path, ids: list[str]) -> None:
    q = OmniQ(Settings(base_dir=base_dir))
    try:
        for i, task_id in enumerate(ids):
            assert q.get_result(task_id, timeout=5) == i * i + 7
        stats = q.stats()
        assert stats.completed == len(ids) and stats.unfinished == 0 and stats.failed == 0
    finally:
        q.close()


def worker_pids(supervisor: subprocess.Popen[str]) -> list[int]:
    """The supervisor's worker processes: its descendants minus the fork server and the
    resource tracker (direct children that multiprocessing starts for itself)."""
    try:
        parent = psutil.Process(supervisor.pid)
        direct = parent.children()
        everyone = parent.children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    helpers = ("forkserver", "resource_tracker")
    skip = {k.pid for k in direct if any(h in " ".join(k.cmdline()) for h in helpers)}
    return [k.pid for k in everyone if k.pid not in skip]


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_thousand_tasks_from_a_producer_are_drained_by_the_cli(tmp_path: Path) -> None:
    ids = produce(tmp_path, 1000, 0.0)
    workers = start_workers(tmp_path, "--procs", "2", "--burst")
    _, err = workers.communicate(timeout=120)
    assert workers.returncode == 0, err
    assert_all_results(tmp_path, ids)


def test_sigkill_of_the_supervisor_loses_nothing(tmp_path: Path) -> None:
    ids = produce(tmp_path, 600, 0.004)
    env = {"OMNIQ_LEASE_TTL": "1.5"}
    first = start_workers(tmp_path, "--procs", "2", **env)
    q = OmniQ(Settings(base_dir=tmp_path))
    try:
        wait_for(lambda: q.stats().completed >= 100, 60, "the first 100 results")
        children = worker_pids(first)
        assert len(children) == 2
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=10)
        # Its worker processes die with it (PR_SET_PDEATHSIG / forkserver exit).
        wait_for(lambda: not [p for p in children if _alive(p)], 3, "orphans to die")
        stats = q.stats()
        assert stats.completed < len(ids), "killed too late to prove anything"
        assert stats.running > 0  # claimed by the dead supervisor, leases not yet expired
    finally:
        q.close()
    second = start_workers(tmp_path, "--procs", "2", "--burst", **env)
    _, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    assert_all_results(tmp_path, ids)


def test_sigterm_lets_running_tasks_finish_and_returns_the_rest_uncharged(
    tmp_path: Path,
) -> None:
    ids = produce(tmp_path, 40, 0.4)
    workers = start_workers(tmp_path, "--procs", "2", OMNIQ_SHUTDOWN_GRACE="5")
    q = OmniQ(Settings(base_dir=tmp_path))
    try:
        wait_for(lambda: q.stats().completed >= 2, 30, "two results")
        workers.send_signal(signal.SIGTERM)
        _, err = workers.communicate(timeout=15)
        assert workers.returncode == 0, err
        stats = q.stats()
        assert stats.running == 0  # nothing left claimed: no waiting for lease expiry
        assert stats.completed + stats.pending == len(ids)
        assert stats.pending > 0 and stats.retrying == 0  # the rest went back uncharged
        for task_id in ids:
            task = q.get_task(task_id)
            assert task is not None
            expected = 1 if task.status is TaskStatus.COMPLETED else 0
            assert task.attempts == expected
    finally:
        q.close()


def test_sigterm_past_the_grace_kills_and_requeues_a_long_task(tmp_path: Path) -> None:
    q = OmniQ(Settings(base_dir=tmp_path))
    try:
        task_id = q.enqueue(time.sleep, 60, max_retries=0)
        workers = start_workers(tmp_path, "--procs", "1", OMNIQ_SHUTDOWN_GRACE="0.5")
        wait_for(lambda: q.stats().running == 1, 30, "the task to start")
        wait_for(lambda: len(worker_pids(workers)) >= 1, 10, "the worker")
        child = worker_pids(workers)
        began = time.monotonic()
        workers.send_signal(signal.SIGTERM)
        _, err = workers.communicate(timeout=15)
        assert workers.returncode == 0, err
        assert time.monotonic() - began < 5
        assert child and not [p for p in child if _alive(p)]
        task = q.get_task(task_id)
        # Interrupted by shutdown, not by its own fault: back in the queue, uncharged,
        # even though max_retries=0 would have failed it on a real error.
        assert task is not None and task.status is TaskStatus.PENDING and task.attempts == 0
    finally:
        q.close()


def test_producer_get_result_says_when_no_worker_is_running(tmp_path: Path) -> None:
    from omniq_mp import ResultTimeoutError

    q = OmniQ(Settings(base_dir=tmp_path))
    try:
        task_id = q.enqueue(lambda: 1)
        with pytest.raises(ResultTimeoutError, match="no worker is serving"):
            q.get_result(task_id, timeout=0.2)
        assert os.path.exists(tmp_path / "omniq.db")
    finally:
        q.close()
