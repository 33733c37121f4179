"""``omniq-mp events``: filters, JSON lines, and --follow from another process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from omniq_mp import OmniQ, Settings
from tests.e2e.conftest import Cli, cli_env

pytestmark = pytest.mark.e2e


def test_events_lists_a_task_lifecycle_with_filters(tmp_path: Path, omniq: Cli) -> None:
    task_id = omniq("enqueue", "math.sqrt", "--max-retries", "0", "--", "-1").stdout.strip()
    assert omniq("workers", "--procs", "1", "--burst").returncode == 0
    lines = omniq("events", "--task", task_id, "--json").stdout.splitlines()
    kinds = [json.loads(line)["event_type"] for line in lines]
    assert kinds == ["ENQUEUED", "STARTED", "FAILED"]
    failed = omniq("events", "--type", "failed")
    assert failed.returncode == 0 and "ValueError: math domain error" in failed.stdout
    positions = [json.loads(line)["position"] for line in lines]
    after = omniq("events", "--task", task_id, "--after", str(positions[0]), "--json")
    assert len(after.stdout.splitlines()) == 2


@pytest.mark.parametrize("args", [("--type", "NOPE"), ("--type", ","), ("--after", "-1")])
def test_bad_filters_are_usage_errors(omniq: Cli, args: tuple[str, ...]) -> None:
    done = omniq("events", *args)
    assert done.returncode == 2 and "Traceback" not in done.stderr


def test_follow_prints_new_events_live_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    store = tmp_path / "store"
    follower = subprocess.Popen(
        [sys.executable, "-m", "omniq_mp", "events", "--follow", "--json", "--type", "COMPLETED"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(store),
    )
    try:
        with OmniQ(Settings(base_dir=store, procs=1)) as q:
            task_id = q.enqueue(pow, 2, 8)
            assert q.get_result(task_id, timeout=30) == 256
        assert follower.stdout is not None
        line = follower.stdout.readline()  # blocks until the follower prints the event
        assert json.loads(line)["task_id"] == task_id
        follower.send_signal(signal.SIGINT)
        _, err = follower.communicate(timeout=30)  # generous: CI machines can be loaded
        assert follower.returncode == 0, err
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.communicate()
