"""Stopping an ``interval=`` task through the id ``enqueue`` returned, though every run
after the first has an id of its own."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from omniq_mp import OmniQ, Settings, TaskFailedError, TaskStatus
from tests.e2e.conftest import Cli
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e

HOUR = 3600.0


def run_once_then_wait(q: OmniQ, interval: float) -> str:
    """Enqueue an interval task, wait for its first run; its id."""
    first = q.enqueue(time.time, interval=interval)
    q.get_result(first, timeout=60)
    return first


def test_an_interval_task_gets_its_first_id_as_key_unless_given_one(tmp_path: Path) -> None:
    q = OmniQ(Settings(base_dir=tmp_path))  # a producer: no supervisor
    try:
        plain = q.enqueue(time.time, interval=HOUR)
        keyed = q.enqueue(time.time, interval=HOUR, key="hourly")
        once = q.enqueue(time.time)
        assert q.get_task(plain).key == plain  # type: ignore[union-attr]
        assert q.get_task(keyed).key == "hourly"  # type: ignore[union-attr]
        assert q.get_task(once).key is None  # type: ignore[union-attr]
    finally:
        q.close()


def test_cancel_by_the_first_id_stops_the_series_between_runs(tmp_path: Path) -> None:
    with OmniQ(Settings(base_dir=tmp_path, procs=1)) as q:
        first = run_once_then_wait(q, HOUR)
        assert q.stats().pending == 1  # the next run, an hour away, under a new id
        assert q.cancel(first) is True
        stats = q.stats()
        assert (stats.unfinished, stats.completed, stats.cancelled) == (0, 1, 1)
        assert q.get_task(first).status is TaskStatus.COMPLETED  # type: ignore[union-attr]
        assert q.cancel(first) is False  # nothing left to stop


def series_holding_its_second_run(runs: Path, release: Path) -> Callable[[], int]:
    """A task that notes each run in ``runs`` and, from its second run, runs until
    ``release`` exists (a minute at most)."""

    def run() -> int:
        with runs.open("a") as out:
            out.write("run\n")
        count = len(runs.read_text().splitlines())
        deadline = time.monotonic() + 60
        while count > 1 and not release.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        return count

    return run


def test_cancel_by_the_first_id_kills_the_run_under_way(tmp_path: Path) -> None:
    runs = tmp_path / "runs.txt"
    with OmniQ(Settings(base_dir=tmp_path / "store", procs=1)) as q:
        first = q.enqueue(series_holding_its_second_run(runs, tmp_path / "never"), interval=0.1)
        wait_for(lambda: q.stats().running == 1 and q.stats().completed == 1, 60, "run two")
        assert q.cancel(first) is True
        wait_for(lambda: q.stats().unfinished == 0, 60, "the series to stop")
        stats = q.stats()
        assert (stats.completed, stats.cancelled) == (1, 1)
        assert len(runs.read_text().splitlines()) == 2  # killed in run two: no third


def test_a_key_reused_after_its_series_ended_is_not_cancelled(tmp_path: Path) -> None:
    with OmniQ(Settings(base_dir=tmp_path, procs=1)) as q:
        first = q.enqueue(time.time, interval=HOUR, key="report")
        q.get_result(first, timeout=60)
        assert q.cancel(first) is True
        # The key again, on a task of no series: cancel(first) must leave it alone.
        other = q.enqueue(time.time, key="report", eta=timedelta(hours=1))
        assert q.cancel(first) is False
        assert q.get_task(other).status is TaskStatus.PENDING  # type: ignore[union-attr]


def test_cli_cancel_of_a_finished_run_stops_the_series(tmp_path: Path, omniq: Cli) -> None:
    with OmniQ(Settings(base_dir=tmp_path / "store", procs=1)) as q:
        first = run_once_then_wait(q, HOUR)
    done = omniq("cancel", first)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"interval task {first} stopped: no more runs"
    q = OmniQ(Settings(base_dir=tmp_path / "store"))
    try:
        assert (q.stats().unfinished, q.stats().cancelled) == (0, 1)
    finally:
        q.close()
    again = omniq("cancel", first)
    assert again.returncode == 0
    assert again.stdout.strip() == f"task {first} already finished (COMPLETED); nothing to do"


def test_a_failed_run_is_not_revived_beside_the_series_next_run(tmp_path: Path, omniq: Cli) -> None:
    def fails() -> None:
        raise ValueError("no")

    with OmniQ(Settings(base_dir=tmp_path / "store", procs=1)) as q:
        first = q.enqueue(fails, interval=HOUR, max_retries=0)
        with pytest.raises(TaskFailedError):
            q.get_result(first, timeout=60)
        assert q.stats().pending == 1  # a failed run does not end the series
    done = omniq("retry", first)
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"error: an unfinished task holds their key, left as they are: {first} (key '{first}')"
    )
    q = OmniQ(Settings(base_dir=tmp_path / "store"))
    try:
        assert q.retry(first) == []
        assert q.cancel(first) is True  # the series stops: its key is free
        assert q.retry(first) == [first]
        assert q.get_task(first).status is TaskStatus.PENDING  # type: ignore[union-attr]
    finally:
        q.close()
