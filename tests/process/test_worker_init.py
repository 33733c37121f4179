"""worker_init: a function each worker process runs once before its first task (row 11
of the fault matrix: an initializer that raises or hangs)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from omniq_mp import ConfigError, OmniQ, Settings, TaskStatus
from omniq_mp.stats import WorkerStatistics
from tests.waiting import wait_for

pytestmark = pytest.mark.process

REPO_ROOT = Path(__file__).resolve().parents[2]
HELPERS = "tests.process.worker_init_helpers"


def _env(base_dir: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIQ_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.update(OMNIQ_BASE_DIR=str(base_dir), **settings)
    return env


def _workers(
    base_dir: Path, timeout: float, *options: str, **settings: str
) -> tuple[int, str, float]:
    """Run ``omniq-mp workers --procs 1 [options]`` to its end; (exit code, stderr,
    seconds)."""
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "omniq_mp", "workers", "--procs", "1", *options],
        env=_env(base_dir, **settings),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return done.returncode, done.stderr, time.monotonic() - began


def _error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    return errors[0]


def test_worker_init_runs_once_in_each_worker_before_its_tasks(tmp_path: Path) -> None:
    settings = Settings(base_dir=tmp_path, procs=2, worker_init=f"{HELPERS}.load")
    with OmniQ(settings) as q:
        ids = [q.enqueue(f"{HELPERS}.loaded") for _ in range(12)]
        values = [q.get_result(i, timeout=30) for i in ids]
    assert 1 <= len({pid for pid, _, _ in values}) <= 2
    for pid, loaded, calls in values:
        assert loaded == f"loaded in {pid}" and calls == 1


def test_a_raising_worker_init_stops_the_supervisor_at_start_and_claims_nothing(
    tmp_path: Path,
) -> None:
    q = OmniQ(Settings(base_dir=tmp_path))
    task_id = q.enqueue("math.sqrt", 4)
    q.close()
    code, stderr, took = _workers(tmp_path, 60, "--worker-init", f"{HELPERS}.fail")
    assert code == 1
    line = _error_line(stderr)
    assert "worker_init failed" in line and "ValueError: model file missing" in line
    assert took < 20
    q = OmniQ(Settings(base_dir=tmp_path))
    try:
        task = q.get_task(task_id)
        assert task is not None and task.status is TaskStatus.PENDING and task.attempts == 0
    finally:
        q.close()


def test_a_hanging_worker_init_is_cut_off_at_worker_init_timeout(tmp_path: Path) -> None:
    code, stderr, took = _workers(
        tmp_path, 60, OMNIQ_WORKER_INIT=f"{HELPERS}.hang", OMNIQ_WORKER_INIT_TIMEOUT="1"
    )
    assert code == 1
    assert "did not report ready within 1s" in _error_line(stderr)
    assert took < 15


def test_workers_that_stop_starting_make_the_supervisor_give_up_without_claiming(
    tmp_path: Path,
) -> None:
    """The first worker starts; once its task kills it, every new one fails to start.
    While it has no worker the supervisor claims nothing (tasks enqueued meanwhile, due
    at once, are never seen RUNNING), and after max_start_failures failed starts (backoff
    1 s, 2 s) it exits 1 with the error."""
    q = OmniQ(Settings(base_dir=tmp_path))
    dying = q.enqueue(f"{HELPERS}.die")
    later: list[str] = []
    settings = {
        "OMNIQ_WORKER_INIT": f"{HELPERS}.works_once",
        "OMNIQ_MAX_START_FAILURES": "3",
        "OMNIQ_TEST_INIT_LOG": str(tmp_path / "seat"),
    }
    seen_running: set[str] = set()
    try:
        with (tmp_path / "stderr").open("w") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "omniq_mp", "workers", "--procs", "1"],
                env=_env(tmp_path, **settings),
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            died = q.get_task(dying)
            if not later and died is not None and died.crashes:  # its worker is gone
                later = [q.enqueue("math.sqrt", 4) for _ in range(3)]
            for task_id in later:  # watched from outside, as an operator would
                task = q.get_task(task_id)
                if task is not None and task.status is TaskStatus.RUNNING:
                    seen_running.add(task_id)
            time.sleep(0.02)
        assert proc.wait(timeout=5) == 1
        line = _error_line((tmp_path / "stderr").read_text())
        assert "licence server refused" in line, line
        assert len(later) == 3 and seen_running == set()
        died = q.get_task(dying)  # one crash charged, queued again, never started again
        assert died is not None and died.status is TaskStatus.PENDING
        assert died.crashes == 1 and died.attempts == 1
        for task_id in later:
            task = q.get_task(task_id)
            assert task is not None and task.status is TaskStatus.PENDING
            assert task.attempts == 0
    finally:
        q.close()


def _only_supervisor(q: OmniQ) -> WorkerStatistics | None:
    """The one supervisor's statistics from its last heartbeat (None before the first)."""
    workers = q.get_worker_stats()
    assert len(workers) <= 1, workers
    return workers[0] if workers else None


def test_worker_stats_say_degraded_while_a_worker_that_cannot_start_is_retried(
    tmp_path: Path,
) -> None:
    """What an operator reads from another process (``get_worker_stats``, which ``omniq-mp
    stats`` and ``top`` print): "ok" with no failed start while the one worker is up; once
    it died and its replacement cannot start, the heartbeats taken while the supervisor is
    still retrying say "degraded" and count the failed starts."""
    settings = {
        "OMNIQ_WORKER_INIT": f"{HELPERS}.works_once",
        # Far more than the test waits for (backoff 1 s, 2 s, 4 s ...): the supervisor is
        # still retrying, not giving up, when its heartbeats are read.
        "OMNIQ_MAX_START_FAILURES": "20",
        "OMNIQ_TEST_INIT_LOG": str(tmp_path / "seat"),
    }
    q = OmniQ(Settings(base_dir=tmp_path))
    stderr = tmp_path / "stderr"
    try:
        with stderr.open("w") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "omniq_mp", "workers", "--procs", "1"],
                env=_env(tmp_path, **settings),
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        try:
            wait_for(lambda: _only_supervisor(q) is not None, 30, "the first heartbeat")
            healthy = _only_supervisor(q)
            assert healthy is not None
            assert (healthy.health, healthy.start_failures) == ("ok", 0)

            q.enqueue(f"{HELPERS}.die")  # its worker dies; no replacement can start
            wait_for(lambda: "retrying in" in stderr.read_text(), 30, "a failed worker start")
            failed_at = time.time()

            def beat_since_failure() -> bool:
                w = _only_supervisor(q)
                return w is not None and w.last_heartbeat > failed_at

            wait_for(beat_since_failure, 10, "a heartbeat after the failed start")
            degraded = _only_supervisor(q)
            assert proc.poll() is None, "the supervisor gave up instead of retrying"
            assert degraded is not None
            assert degraded.health == "degraded" and degraded.start_failures >= 1
            assert degraded.active == 0
            shown = _cli(tmp_path, "stats")
            assert "health degraded (" in shown, shown  # what `omniq-mp stats` prints
            status = _cli(tmp_path, "status")
            assert "health=degraded" in status, status
            proc.terminate()  # a degraded supervisor still stops gracefully
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
    finally:
        q.close()


@pytest.mark.parametrize("bad", ["model", "pkg.", "1pkg.fn", "pkg.mod:", "pkg mod.fn"])
def test_a_worker_init_that_is_not_a_dotted_path_is_refused_by_name(bad: str) -> None:
    with pytest.raises(ConfigError, match="worker_init must be a dotted path"):
        Settings(worker_init=bad)


def _cli(tmp_path: Path, command: str) -> str:
    """What ``omniq-mp COMMAND`` prints for the test's store."""
    return subprocess.run(
        [sys.executable, "-m", "omniq_mp", command],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
