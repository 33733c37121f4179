"""The supervisor's side: workers die with it, ``__main__`` is not re-imported, and the
full stack turns timeouts into retries and then a failure."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from omniq_mp import AsyncOmniQ, TaskFailedError, TaskStatus
from omniq_mp.retry import RetryPolicy
from tests.process import tasks
from tests.process.support import describe, is_alive, wait_until_sync

pytestmark = pytest.mark.process

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT_STARTUP = 30.0  # a fresh interpreter, the store and two spawned workers


def _env() -> dict[str, str]:
    # The scripts import tests.process.tasks; OMNIQ_* from the caller must not leak in.
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIQ_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


SUPERVISOR_SCRIPT = """
import sys
import time

from omniq_mp import OmniQ
from tests.process import tasks

base_dir, pid_dir, start_method = sys.argv[1:4]
with OmniQ(base_dir=base_dir, procs=2, start_method=start_method) as q:
    for i in range(2):  # one long task per worker: both are busy when we are killed
        q.enqueue(tasks.record_pid_then_sleep, f"{pid_dir}/worker{i}", 300)
    time.sleep(300)  # killed by the test long before
"""


def test_workers_die_with_a_killed_supervisor(tmp_path: Path, start_method: str) -> None:
    script = tmp_path / "supervisor.py"
    script.write_text(SUPERVISOR_SCRIPT)
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    pid_files = [pid_dir / "worker0", pid_dir / "worker1"]
    with (tmp_path / "stderr").open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / "store"), str(pid_dir), start_method],
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    workers: list[int] = []
    try:
        wait_until_sync(
            lambda: all(f.exists() for f in pid_files) or proc.poll() is not None,
            SCRIPT_STARTUP,
            "both workers are running a task",
        )
        assert proc.poll() is None, (tmp_path / "stderr").read_text()
        workers = [int(f.read_text()) for f in pid_files]
        assert all(is_alive(pid) for pid in workers)

        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=5)
        wait_until_sync(
            lambda: not any(is_alive(pid) for pid in workers),
            2.0,
            lambda: f"workers of a SIGKILLed supervisor died: {describe(workers)}",
        )
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        for pid in workers:  # on failure, do not leave them sleeping for 300 s
            if is_alive(pid):
                os.kill(pid, signal.SIGKILL)


UNGUARDED_MAIN_SCRIPT = """
import sys

from omniq_mp import OmniQ

print("main module body ran", flush=True)


def make_adder(n):
    def add(x):
        return x + n

    return add


offset = 100
with OmniQ(base_dir=sys.argv[1], procs=1, start_method=sys.argv[2]) as q:
    doubled = q.enqueue(lambda x: x * 2, 21)
    added = q.enqueue(make_adder(offset), 5)
    print(q.get_result(doubled, timeout=30), q.get_result(added, timeout=30), flush=True)
"""


def test_main_without_guard_is_not_reimported_in_workers(tmp_path: Path, start_method: str) -> None:
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent(UNGUARDED_MAIN_SCRIPT))
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "store"), start_method],
        env=_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    # Printed once: a worker re-importing __main__ would print it again (and start a queue).
    assert done.stdout.splitlines() == ["main module body ran", "42 105"], done.stderr


async def test_timeout_is_retried_then_fails_while_other_tasks_complete(tmp_path: Path) -> None:
    async with AsyncOmniQ(base_dir=tmp_path, procs=2) as q:
        q.queue.retry_policy = RetryPolicy(base=0.05)
        slow = await q.enqueue(tasks.sleep_for, 10, timeout=0.5, max_retries=1)
        quick = await q.enqueue(tasks.add, 40, 2)

        assert await q.get_result(quick, timeout=10) == 42
        with pytest.raises(TaskFailedError) as failed:
            await q.get_result(slow, timeout=15)
        assert failed.value.error_type == "TimeoutError"

        task = await q.get_task(slow)
        assert task is not None
        assert task.status is TaskStatus.FAILED
        assert task.attempts == 2
        assert task.error is not None
        assert task.error.error_type == "TimeoutError"
        assert task.error.kind == "timeout"
        assert task.error.retry_count == 1
        done = await q.get_task(quick)
        assert done is not None
        assert done.status is TaskStatus.COMPLETED
        assert done.attempts == 1
        json.dumps(task.error.to_dict())  # plain data, storable as is
