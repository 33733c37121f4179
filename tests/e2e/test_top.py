"""``omniq-mp top`` in a pseudo-terminal: it shows the running task and quits on ``q``."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from omniq_mp import OmniQ, Settings
from tests.e2e.conftest import cli_env, start_workers
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e


def _read_until(fd: int, needle: str, timeout: float) -> str:
    seen = ""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"{needle!r} never appeared; screen was:\n{seen[-2000:]}"
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            seen += os.read(fd, 65536).decode(errors="replace")
    return seen


def test_top_shows_the_running_task_and_quits_on_q(tmp_path: Path) -> None:
    store = tmp_path / "store"
    q = OmniQ(Settings(base_dir=store))
    workers = start_workers(store, "--procs", "1")
    main, secondary = os.openpty()
    env = {**cli_env(store), "COLUMNS": "160", "LINES": "40", "TERM": "xterm"}
    top = subprocess.Popen(
        [sys.executable, "-m", "omniq_mp", "top", "--interval", "0.2"],
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
        env=env,
    )
    os.close(secondary)
    try:
        task_id = q.enqueue(time.sleep, 30)
        wait_for(
            lambda: any(c.task_id == task_id for w in q.get_worker_stats() for c in w.children),
            30,
            "the task to show in a heartbeat",
        )
        screen = _read_until(main, task_id, 30)
        assert "omniq-mp top" in screen and "default" in screen
        os.write(main, b"q")
        assert top.wait(10) == 0
        q.cancel(task_id)
    finally:
        if top.poll() is None:
            top.kill()
            top.wait()
        os.close(main)
        workers.terminate()
        workers.communicate(timeout=30)
        q.close()
