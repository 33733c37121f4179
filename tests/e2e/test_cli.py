"""``omniq-mp`` as a user types it: usage errors, bad stores, enqueue/result/status."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import Cli

pytestmark = pytest.mark.e2e


def test_help_lists_the_commands(omniq: Cli) -> None:
    done = omniq("--help")
    assert done.returncode == 0
    for command in ("workers", "enqueue", "result", "status", "demo"):
        assert command in done.stdout


@pytest.mark.parametrize(
    "args",
    [
        ("workers", "--procs", "0"),
        ("workers", "--procs", "abc"),
        ("workers", "--backend", "mongo"),
        ("workers", "--start-method", "fork"),
        ("enqueue", "math.pow", "--kwargs", "{not json"),
        ("enqueue", "math.pow", "--kwargs", "[1, 2]"),
        ("enqueue", "pow"),
        ("enqueue", "math.pow", "--timeout", "-1"),
        ("enqueue", "math.pow", "--max-retries", "-2"),
        ("--log-level", "LOUD", "status"),
    ],
)
def test_usage_errors_exit_2_with_one_clear_line(omniq: Cli, args: tuple[str, ...]) -> None:
    done = omniq(*args)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "Error" in done.stderr


def test_bad_env_setting_is_a_usage_error(omniq: Cli) -> None:
    done = omniq("status", OMNIQ_LEASE_TTL="-5")
    assert done.returncode == 2 and "lease_ttl" in done.stderr


def test_enqueue_then_workers_burst_then_result(omniq: Cli) -> None:
    enq = omniq("enqueue", "math.pow", "2", "10")
    assert enq.returncode == 0, enq.stderr
    task_id = enq.stdout.strip()
    pending = omniq("result", task_id)
    assert pending.returncode == 1 and "PENDING" in pending.stderr
    assert "no worker is serving" in pending.stderr
    drained = omniq("workers", "--procs", "1", "--burst")
    assert drained.returncode == 0, drained.stderr
    got = omniq("result", task_id)
    assert got.returncode == 0 and got.stdout.strip() == "1024.0"
    status = omniq("status", "--json")
    assert '"completed": 1' in status.stdout


def test_failed_task_result_shows_the_remote_error_and_exits_1(omniq: Cli) -> None:
    task_id = omniq("enqueue", "math.sqrt", "--max-retries", "0", "--", "-1").stdout.strip()
    assert omniq("workers", "--procs", "1", "--burst").returncode == 0
    got = omniq("result", task_id)
    assert got.returncode == 1
    assert "ValueError: math domain error" in got.stderr


def test_unknown_dotted_path_fails_that_task_only(omniq: Cli) -> None:
    bad = omniq("enqueue", "no_such_module.fn").stdout.strip()
    good = omniq("enqueue", "math.factorial", "5").stdout.strip()
    assert omniq("workers", "--procs", "1", "--burst").returncode == 0
    failed = omniq("result", bad)
    assert failed.returncode == 1 and "No module named 'no_such_module'" in failed.stderr
    assert omniq("result", good).stdout.strip() == "120"


def test_unknown_task_id_is_one_line_exit_1(omniq: Cli) -> None:
    done = omniq("result", "deadbeef")
    assert done.returncode == 1
    assert done.stderr.strip().startswith("error: no task with id 'deadbeef'")


def test_a_store_path_that_is_a_file_is_refused(omniq: Cli, tmp_path: Path) -> None:
    (tmp_path / "store").write_text("precious")
    done = omniq("workers", "--burst")
    assert done.returncode == 1
    assert "not a directory" in done.stderr and "Traceback" not in done.stderr
    assert (tmp_path / "store").read_text() == "precious"


def test_a_corrupt_database_is_refused_and_never_overwritten(omniq: Cli, tmp_path: Path) -> None:
    (tmp_path / "store").mkdir()
    db = tmp_path / "store" / "omniq.db"
    junk = b"definitely not sqlite " * 100
    db.write_bytes(junk)
    done = omniq("workers", "--burst")
    assert done.returncode == 1
    assert "omniq.db" in done.stderr and "Traceback" not in done.stderr
    assert db.read_bytes() == junk


def test_demo_runs_every_kind_of_task(omniq: Cli) -> None:
    done = omniq("demo", "--procs", "2", timeout=120)
    assert done.returncode == 0, done.stderr
    assert "14 tasks in" in done.stdout and "13 completed, 1 failed" in done.stdout
    assert "succeeded on retry" in done.stdout
    assert "exceeded its 1s timeout" in done.stdout


def test_workers_burst_progress_bar_counts_done_and_failed(omniq: Cli) -> None:
    for n in ("1", "2", "0"):
        assert omniq("enqueue", "operator.truediv", "1", n, "--max-retries", "0").returncode == 0
    drained = omniq("workers", "--procs", "1", "--burst", "--progress")
    assert drained.returncode == 0, drained.stderr
    assert "3/3" in drained.stderr and "failed=1" in drained.stderr
    quiet = omniq("workers", "--procs", "1", "--burst")  # not a terminal: no bar by default
    assert "task/s" not in quiet.stderr
