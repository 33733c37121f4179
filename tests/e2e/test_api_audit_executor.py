"""Executor and cron-schedule behaviour found wanting in an audit of the Python API: what a
user of ``concurrent.futures`` and of ``enqueue(cron=...)`` relies on."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from omniq_mp import OmniQ, OmniQExecutor, TaskStatus
from omniq_mp.errors import ConfigError
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e


def wait_for_gate(gate: str, value: int) -> int:
    """Block until the file ``gate`` exists, then return ``value``."""
    while not Path(gate).exists():
        time.sleep(0.01)
    return value


def test_shutdown_without_waiting_still_completes_running_and_queued_futures(
    tmp_path: Path,
) -> None:
    # concurrent.futures: shutdown(wait=False) returns at once, and the futures already
    # submitted still complete. An owned executor used to stop its supervisor right away,
    # which left them pending forever.
    gate = tmp_path / "gate"
    executor = OmniQExecutor(base_dir=tmp_path / "store", procs=1, shutdown_grace=1.0)
    running = executor.submit(wait_for_gate, str(gate), 1)
    queued = executor.submit(wait_for_gate, str(gate), 2)
    wait_for(
        lambda: executor.omniq.get_task(running.task_id).status is TaskStatus.RUNNING,
        30,
        "the first task to start",
    )
    executor.shutdown(wait=False)
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(wait_for_gate, str(gate), 3)
    gate.touch()
    assert running.result(timeout=30) == 1
    assert queued.result(timeout=30) == 2
    # ... and the executor's own supervisor is stopped once they are done.
    wait_for(
        lambda: not any(t.name == "omniq-executor-shutdown" for t in threading.enumerate()),
        30,
        "the executor's supervisor to stop",
    )


def test_bad_executor_options_are_refused_before_any_worker_starts(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="timeout"):
        OmniQExecutor(base_dir=tmp_path / "owned", procs=1, timeout=-1)
    # Nothing was started: no store folder was even created.
    assert not (tmp_path / "owned").exists()
    q = OmniQ(base_dir=tmp_path / "store")
    try:
        with pytest.raises(ConfigError, match="queue"):
            q.executor(queue=5)
        with pytest.raises(ConfigError, match="max_memory"):
            q.executor(max_memory="lots")
        # Task options an executor does not fix are named as such, not as settings.
        with pytest.raises(TypeError, match=r"sets only the task options .*'eta'"):
            q.map(abs, [1], eta=timedelta(seconds=1))
        with pytest.raises(TypeError, match=r"unknown options \['tiemout'\]"):
            q.executor(tiemout=5)
        with pytest.raises(TypeError, match="apply only when the executor owns"):
            q.executor(procs=2)
        assert q.stats().pending == 0
    finally:
        q.close()


def test_a_map_timeout_that_is_not_a_number_is_refused_before_anything_is_stored(
    tmp_path: Path,
) -> None:
    q = OmniQ(base_dir=tmp_path / "store")
    try:
        for timeout in ("1", float("nan"), True):
            with pytest.raises(ConfigError, match="timeout must be None or a number"):
                q.map(abs, [1, 2], timeout=timeout)  # type: ignore[arg-type]
        assert q.stats().pending == 0 and q.stats().cancelled == 0
    finally:
        q.close()


def test_cron_with_interval_is_refused_and_nothing_is_stored(tmp_path: Path) -> None:
    # The interval was dropped without a word on SQLite; on the file store it was kept,
    # so every firing of the cron started a task that re-ran itself forever.
    for backend in ("sqlite", "file"):
        q = OmniQ(base_dir=tmp_path / backend, backend=backend)
        try:
            with pytest.raises(ConfigError, match="interval= cannot be combined with cron="):
                q.enqueue(abs, -1, cron="* * * * *", interval=5)
            assert q.periodic() == []
        finally:
            q.close()
