"""PROD logs are JSON lines, and a task's own log lines, written in its worker process,
reach the application's sinks carrying the task id as correlation id."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

SCRIPT = """
import sys
from loguru import logger
from omniq_mp import OmniQ, Settings
from omniq_mp.logging import configure

configure(mode="PROD", log_file=sys.argv[2], level="INFO")

def work(x):
    logger.info("hello from task {}", x)  # runs in a worker process
    return x * 2

with OmniQ(Settings(base_dir=sys.argv[1], procs=1)) as q:
    task_id = q.enqueue(work, 21)
    assert q.get_result(task_id, timeout=30) == 42
    print(task_id)
"""


def test_task_log_lines_reach_the_parent_sinks_with_the_correlation_id(tmp_path: Path) -> None:
    log_file = tmp_path / "app.log"
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "store"), str(log_file)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    task_id = done.stdout.strip()
    records = [json.loads(line)["record"] for line in log_file.read_text().splitlines()]
    [hello] = [r for r in records if r["message"] == "hello from task 21"]
    assert hello["extra"]["correlation_id"] == task_id
    assert hello["extra"]["task_id"] == task_id
    assert hello["extra"]["pid"] != hello["process"]["id"]  # written in the worker process
    assert any(r["extra"].get("action") == "worker_online" for r in records)
