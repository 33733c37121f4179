"""``omniq-mp workers --metrics-port``: Prometheus metrics scraped over loopback."""

from __future__ import annotations

import socket
import time
import urllib.request
from pathlib import Path

import pytest

from omniq_mp import OmniQ, Settings, TaskFailedError
from tests.e2e.conftest import Cli, start_workers
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def test_metrics_count_outcomes_kills_and_restarts(tmp_path: Path) -> None:
    store = tmp_path / "store"
    port = free_port()
    workers = start_workers(store, "--procs", "1", "--metrics-port", str(port))
    q = OmniQ(Settings(base_dir=store))
    try:
        ok = [q.enqueue(pow, 2, n) for n in range(3)]
        slow = q.enqueue(time.sleep, 30, timeout=0.3, max_retries=0)
        for task_id in ok:
            q.get_result(task_id, timeout=30)
        with pytest.raises(TaskFailedError):
            q.get_result(slow, timeout=30)
        wait_for(lambda: "omniq_worker_restarts_total 1.0" in scrape(port), 10, "a restart")
        text = scrape(port)
        assert 'omniq_tasks_total{outcome="completed",queue="default"} 3.0' in text
        assert 'omniq_tasks_total{outcome="timed_out",queue="default"} 1.0' in text
        assert 'omniq_task_kills_total{reason="timeout"} 1.0' in text
        assert 'omniq_task_duration_seconds_count{queue="default"} 4.0' in text
        assert "omniq_workers_alive 1.0" in text
    finally:
        workers.terminate()
        workers.communicate(timeout=30)
        q.close()


def test_a_taken_metrics_port_is_a_usage_error(omniq: Cli) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = omniq("workers", "--burst", "--metrics-port", str(port))
    assert done.returncode == 2 and "--metrics-port" in done.stderr
