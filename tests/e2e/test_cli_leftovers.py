"""``omniq-mp`` where it used to surprise: a malformed ``--dsn`` blamed on a server it never
tried, ``db`` errors worded unlike every other command's, and ``top`` into a file or a
pipe printing nothing."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from omniq_mp import OmniQ, Settings
from omniq_mp.errors import ConfigError
from tests.e2e.conftest import Cli, cli_env, start_workers, task_waiting_for, wait_running
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e

SECRET = "s3cret"
# Each malformed DSN, and the words that say what is wrong with it.
MALFORMED = [
    ("postgresql://[bad", "well-formed URL"),
    ("not a dsn", "must start with postgresql://"),
    (f"postgresql://omniq:{SECRET}@db.example:abc/jobs", "port must be a whole number"),
    (f"postgresql://omniq:{SECRET}@db.example:5432/jobs?sslmode", "name=value"),
]
UNREACHABLE = f"postgresql://omniq:{SECRET}@127.0.0.1:1/jobs"


@pytest.fixture(autouse=True)
def no_outside_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller's own OMNIQ_* settings must not decide where these commands go."""
    for name in ("OMNIQ_CONFIG", "OMNIQ_DSN", "OMNIQ_BACKEND"):
        monkeypatch.delenv(name, raising=False)


def _assert_usage_error(done: subprocess.CompletedProcess[str], *words: str) -> None:
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    for word in words:
        assert word in done.stderr, done.stderr


# -- a malformed DSN ------------------------------------------------------------------------


@pytest.mark.parametrize(("dsn", "problem"), MALFORMED)
@pytest.mark.parametrize(
    "command",
    [
        ("status", "--backend", "postgres"),
        ("enqueue", "math.pow", "2", "3", "--backend", "postgres"),
        ("db", "version"),
    ],
)
def test_a_malformed_dsn_option_is_a_usage_error_saying_what_is_wrong(
    omniq: Cli, command: tuple[str, ...], dsn: str, problem: str
) -> None:
    done = omniq(*command, "--dsn", dsn)
    _assert_usage_error(done, "--dsn", problem)
    # Nothing was tried: no server is named, and the password is never shown.
    assert "localhost" not in done.stderr and "cannot connect" not in done.stderr
    assert SECRET not in done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize("command", [("status", "--backend", "postgres"), ("db", "version")])
def test_a_malformed_omniq_dsn_is_a_usage_error_too(omniq: Cli, command: tuple[str, ...]) -> None:
    done = omniq(*command, OMNIQ_DSN=f"postgresql://omniq:{SECRET}@db.example:port/jobs")
    _assert_usage_error(done, "dsn", "port must be a whole number")
    assert "localhost" not in done.stderr and SECRET not in done.stderr


@pytest.mark.parametrize(("dsn", "problem"), MALFORMED)
@pytest.mark.parametrize("field", ["dsn", "event_storage_dsn", "result_storage_dsn"])
def test_settings_refuse_a_malformed_dsn(field: str, dsn: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem) as refused:
        Settings(backend="postgres", **{field: dsn})
    assert str(refused.value).startswith(field) and SECRET not in str(refused.value)


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://omniq:p%40ss@db.example:5432/jobs?sslmode=require",
        "postgres://db.example/jobs",
        "postgresql://omniq@db1:5432,db2:5433/jobs",  # several hosts, each with its port
        "postgresql://omniq@[::1]:5432/jobs",
        "postgresql:///jobs?host=/var/run/postgresql",  # a Unix socket
        "postgresql://",  # everything from the driver's defaults and PG* variables
    ],
)
def test_every_dsn_form_the_driver_reads_is_still_accepted(dsn: str) -> None:
    assert Settings(backend="postgres", dsn=dsn).postgres_dsn == dsn


# -- db errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [("db", "version"), ("db", "upgrade")])
def test_db_errors_are_worded_as_every_other_commands(omniq: Cli, command: tuple[str, ...]) -> None:
    other = omniq("status", "--backend", "postgres", "--dsn", UNREACHABLE)
    assert other.returncode == 1 and other.stderr.startswith("error: "), other.stderr
    done = omniq(*command, "--dsn", UNREACHABLE)
    assert done.returncode == 1
    assert done.stderr.startswith("error: ") and "127.0.0.1:1" in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1 and SECRET not in done.stderr


# -- top without a terminal -----------------------------------------------------------------


def _read_until(stream: subprocess.Popen[bytes], needle: str, count: int, timeout: float) -> str:
    """What ``stream`` printed on stdout by the time ``needle`` appeared ``count`` times."""
    assert stream.stdout is not None
    fd = stream.stdout.fileno()
    seen = ""
    deadline = time.monotonic() + timeout
    while seen.count(needle) < count:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"{needle!r} did not appear {count} times; got:\n{seen[-2000:]}"
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            chunk = os.read(fd, 65536)
            assert chunk, f"top exited early; got:\n{seen[-2000:]}"
            seen += chunk.decode()
    return seen


def test_top_into_a_pipe_prints_plain_snapshots_as_it_goes(tmp_path: Path) -> None:
    OmniQ(Settings(base_dir=tmp_path / "store")).close()  # a store to look at
    top = subprocess.Popen(
        [sys.executable, "-m", "omniq_mp", "top", "--interval", "0.2"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(tmp_path / "store"),
    )
    try:
        # Two snapshots while it still runs: each is written out when taken, not held back
        # in a buffer until exit.
        shown = _read_until(top, "omniq-mp top", 2, 60)
        assert top.poll() is None
        assert "supervisor(s)" in shown and "q to quit" not in shown
        assert "\x1b" not in shown  # no colours, no cursor movement: text for a file
        top.send_signal(signal.SIGTERM)
        _, errors = top.communicate(timeout=60)
        assert top.returncode == 0, errors
        assert errors == b""
    finally:
        if top.poll() is None:
            top.kill()
            top.communicate()


def test_top_n_prints_that_many_snapshots_with_each_running_task(
    tmp_path: Path, omniq: Cli
) -> None:
    store = tmp_path / "store"
    marker = tmp_path / "release"
    q = OmniQ(Settings(base_dir=store))
    workers = start_workers(store, "--procs", "1")
    try:
        task_id = q.enqueue(task_waiting_for(marker))
        wait_running(q, task_id)
        wait_for(
            lambda: any(c.task_id == task_id for w in q.get_worker_stats() for c in w.children),
            30,
            "the task to show in a heartbeat",
        )
        done = omniq("top", "-n", "2", "--interval", "0.1")
        assert done.returncode == 0, done.stderr
        assert done.stdout.count("omniq-mp top") == 2
        # The whole id, on one line: a file is as wide as the widest row, never cut.
        assert sum(task_id in line for line in done.stdout.splitlines()) == 2
        assert "\x1b" not in done.stdout
        marker.touch()
        assert q.get_result(task_id, timeout=60) == "done"
    finally:
        marker.touch()
        workers.terminate()
        workers.communicate(timeout=60)
        q.close()
