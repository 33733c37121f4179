"""``omniq-mp`` as real processes meet the outside world: a reader that stops reading,
SIGTERM to ``workers`` while a task runs, SIGTERM to ``top`` on a terminal, Ctrl-C while
the command is still loading."""

from __future__ import annotations

import os
import pty
import signal
import subprocess
import sys
import termios
import threading
from pathlib import Path

import pytest

from omniq_mp import OmniQ
from omniq_mp.models import TaskStatus
from tests.e2e.conftest import cli_env, start_workers, task_waiting_for, wait_running
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e


def test_a_reader_that_stops_reading_is_not_reported_as_an_error(tmp_path: Path) -> None:
    # `omniq-mp events | head -1`: the events fill more than a pipe holds, so the command
    # is still writing when the reader goes; it used to print "error: Broken pipe".
    store = tmp_path / "store"
    q = OmniQ(base_dir=store)
    try:
        q.enqueue_many("math.pow", [(2, n) for n in range(3000)])
    finally:
        q.close()
    proc = subprocess.Popen(
        [sys.executable, "-m", "omniq_mp", "events"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(store),
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert b"ENQUEUED" in proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 1
    assert err == ""


def test_workers_count_the_tasks_that_finish_in_the_shutdown_grace(tmp_path: Path) -> None:
    # The exit line counted only what settled before the stop request: a task that
    # finished during the grace period (and so completed) was left out.
    store, marker = tmp_path / "store", tmp_path / "marker"
    q = OmniQ(base_dir=store)
    try:
        task_id = q.enqueue(task_waiting_for(marker))
        workers = start_workers(store, "--procs", "1")
        try:
            wait_running(q, task_id)
            workers.send_signal(signal.SIGTERM)
            assert workers.stderr is not None
            line = workers.stderr.readline()
            assert "stopping gracefully" in line, line
            marker.touch()  # the task ends now, inside the shutdown grace
            _, err = workers.communicate(timeout=60)
        finally:
            if workers.poll() is None:
                workers.kill()
                workers.wait()
        assert workers.returncode == 0, err
        assert q.get_result(task_id, timeout=0) == "done"
        assert "omniq-mp workers: 1 task attempt(s) settled" in err
    finally:
        q.close()


def _echo_on(fd: int) -> bool:
    return bool(termios.tcgetattr(fd)[3] & termios.ECHO)


def test_top_restores_the_terminal_on_sigterm(tmp_path: Path) -> None:
    # top turns echo off to read q; killed by SIGTERM (`kill`, `timeout 60 omniq-mp top`)
    # it used to leave the shell without echo.
    master, slave = pty.openpty()
    assert _echo_on(master)
    top = subprocess.Popen(
        [sys.executable, "-m", "omniq_mp", "top", "--interval", "0.2"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=cli_env(tmp_path / "store"),
        start_new_session=True,
    )
    os.close(slave)

    def drain() -> None:  # a full terminal buffer would block top's redraws
        try:
            while os.read(master, 65536):
                pass
        except OSError:  # EIO once top has exited and the terminal is gone
            pass

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        wait_for(lambda: not _echo_on(master), 60, "top to take the terminal")
        top.send_signal(signal.SIGTERM)
        assert top.wait(timeout=60) == 0
        assert _echo_on(master)
    finally:
        if top.poll() is None:
            top.kill()
            top.wait()
        reader.join(timeout=10)  # top has exited: its read of the terminal ends with EIO
        os.close(master)


def test_workers_stop_gracefully_when_their_terminal_hangs_up(tmp_path: Path) -> None:
    # SIGHUP (an ssh session or terminal closing) used to kill the supervisor outright,
    # leaving its task RUNNING until the lease lapsed; it now stops as SIGTERM does and
    # hands the unfinished task back to the queue at once.
    store, marker = tmp_path / "store", tmp_path / "marker"
    q = OmniQ(base_dir=store)
    try:
        task_id = q.enqueue(task_waiting_for(marker))
        workers = start_workers(store, "--procs", "1", "--shutdown-grace", "0.2")
        try:
            wait_running(q, task_id)
            workers.send_signal(signal.SIGHUP)
            _, err = workers.communicate(timeout=60)
        finally:
            marker.touch()
            if workers.poll() is None:
                workers.kill()
                workers.wait()
        assert workers.returncode == 0, err
        assert "stopping gracefully" in err
        task = q.get_task(task_id)
        assert task is not None and task.status is TaskStatus.PENDING
        assert task.attempts == 0  # a graceful stop charges no attempt
    finally:
        q.close()


# Holds the import of omniq_mp.cli, after saying so in a file, until a signal ends it:
# the moment of a Ctrl-C on a slow start, made as long as the test needs.
SLOW_CLI_IMPORT = """
import importlib.abc, os, pathlib, sys, time

class HoldTheCli(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "omniq_mp.cli":
            pathlib.Path(os.environ["CLI_IMPORT_BEGUN"]).touch()
            time.sleep(60)
        return None

sys.meta_path.insert(0, HoldTheCli())
"""


def test_ctrl_c_while_the_command_loads_aborts_without_a_traceback(tmp_path: Path) -> None:
    hooks, begun = tmp_path / "hooks", tmp_path / "cli-import-begun"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SLOW_CLI_IMPORT)
    path = os.pathsep.join(filter(None, [str(hooks), os.environ.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "omniq_mp", "workers"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(tmp_path / "store", PYTHONPATH=path, CLI_IMPORT_BEGUN=str(begun)),
    )
    try:
        wait_for(begun.exists, timeout=30, what="the command to start loading its CLI")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert (proc.returncode, err) == (1, "Aborted!\n")
