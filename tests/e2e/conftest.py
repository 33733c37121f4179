"""Helpers to run ``omniq-mp`` and producer scripts as real subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from omniq_mp import OmniQ
from omniq_mp.models import TaskStatus
from tests.waiting import wait_for

Cli = Callable[..., subprocess.CompletedProcess[str]]


def cli_env(base_dir: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMNIQ_BASE_DIR=str(base_dir), OMNIQ_LOG_LEVEL="WARNING", **extra)
    return env


@pytest.fixture
def omniq(tmp_path: Path) -> Cli:
    """Run ``omniq-mp ARGS`` against a store in tmp_path; returns the completed process."""

    def run(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "omniq_mp", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=cli_env(tmp_path / "store", **env),
        )

    return run


def start_workers(base_dir: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    """``omniq-mp workers`` in the background."""
    return subprocess.Popen(
        [sys.executable, "-m", "omniq_mp", "workers", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(base_dir, **env),
    )


def task_waiting_for(marker: Path) -> Callable[[], str]:
    """A task (a closure, so it travels by value) that runs until ``marker`` exists, at
    most a minute, then returns "done": a task a test holds running for as long as it
    needs, with no sleep to guess."""

    def wait_for_marker() -> str:
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        return "done"

    return wait_for_marker


def wait_running(q: OmniQ, task_id: str) -> None:
    """Wait (a minute at most) until the task is RUNNING."""
    wait_for(lambda: _status(q, task_id) is TaskStatus.RUNNING, 60, f"task {task_id} to start")


def _status(q: OmniQ, task_id: str) -> TaskStatus | None:
    task = q.get_task(task_id)
    return None if task is None else task.status
