"""A script or notebook that never calls ``close()`` still ends cleanly: its client is
closed as the interpreter exits, with what it stored kept and its workers stopped."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from omniq_mp import OmniQ, TaskStatus
from omniq_mp.models import Task
from tests.process.support import exists, wait_until_sync

pytestmark = pytest.mark.process

ROOT = Path(__file__).resolve().parents[2]


def run_script(body: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    script = textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def stored_task(base_dir: Path, task_id: str) -> Task:
    q = OmniQ(base_dir=base_dir)  # a client only: no supervisor to claim the task again
    try:
        task = q.get_task(task_id)
    finally:
        q.close()
    assert task is not None, f"task {task_id!r} is not stored"
    return task


def test_a_producer_that_never_closes_exits_cleanly_and_its_task_is_stored(
    tmp_path: Path,
) -> None:
    done = run_script(
        f"""
        from omniq_mp import OmniQ
        q = OmniQ(base_dir={str(tmp_path)!r})
        print(q.enqueue(pow, 2, 10))
        """
    )
    # The close at exit goes through the store's thread; it must still take work then.
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr
    task = stored_task(tmp_path, done.stdout.strip())
    assert task.status is TaskStatus.PENDING
    with OmniQ(base_dir=tmp_path) as q:  # and a supervisor runs it
        assert q.get_result(task.id, timeout=60) == 1024


def test_an_asyncio_script_that_never_closes_its_client_exits_and_its_task_is_stored(
    tmp_path: Path,
) -> None:
    # The event store's aiosqlite thread was not a daemon: the interpreter waited for it
    # after the script's last line, for ever. An exception before close() did the same.
    done = run_script(
        f"""
        import asyncio
        from omniq_mp import AsyncOmniQ, Settings

        async def main():
            q = AsyncOmniQ(Settings(base_dir={str(tmp_path)!r}))
            print(await q.enqueue(pow, 2, 10), flush=True)
            raise RuntimeError("the script fails before it closes its client")

        asyncio.run(main())
        """,
        timeout=60,
    )
    assert done.returncode == 1 and "the script fails before" in done.stderr
    task = stored_task(tmp_path, done.stdout.strip())
    assert task.status is TaskStatus.PENDING


def test_an_embedded_supervisor_left_running_stops_its_workers_and_requeues_at_exit(
    tmp_path: Path,
) -> None:
    pid_file = tmp_path / "pid"
    done = run_script(
        f"""
        import time
        from pathlib import Path
        from omniq_mp import OmniQ
        from tests.process.tasks import write_pid_then_sleep
        q = OmniQ(base_dir={str(tmp_path)!r}, procs=1, shutdown_grace=0.2).start()
        print(q.enqueue(write_pid_then_sleep, {str(pid_file)!r}), flush=True)
        while not Path({str(pid_file)!r}).exists():  # then exit with the task running
            time.sleep(0.01)
        """
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr
    pid = int(pid_file.read_text())
    wait_until_sync(lambda: not exists(pid), 10, f"the task's process {pid} to be gone")
    task = stored_task(tmp_path, done.stdout.strip())
    # Stopped by a shutdown, not by its own fault: back in the queue, uncharged.
    assert task.status is TaskStatus.PENDING and task.attempts == 0
