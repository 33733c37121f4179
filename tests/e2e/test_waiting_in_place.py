"""The synchronous client waits for results in the caller's thread (a read on that
thread's own SQLite connection on every poke), falling back to the loop's watcher only
when that path is not available."""

from __future__ import annotations

import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from omniq_mp import OmniQ, Settings, TaskStatus
from omniq_mp.errors import ResultTimeoutError, TaskNotFoundError
from tests.e2e.conftest import start_workers

pytestmark = pytest.mark.e2e


def stop(workers: subprocess.Popen[str]) -> None:
    workers.send_signal(signal.SIGTERM)
    try:
        workers.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        workers.kill()
        workers.communicate(timeout=10)


def test_results_of_a_supervisor_in_another_process_arrive_in_the_callers_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base_dir = tmp_path / "store"
    workers = start_workers(base_dir, "--procs", "2")
    q = OmniQ(base_dir=base_dir)
    try:
        ids = [q.enqueue(pow, 2, i) for i in range(20)]
        finished = q._async.wait_in_thread(ids[0], 60)
        assert finished is not None and finished.status is TaskStatus.COMPLETED

        async def not_through_the_loop(*_: Any) -> Any:
            raise AssertionError("get_result went through the event loop")

        monkeypatch.setattr(q._async, "get_result", not_through_the_loop)
        assert [q.get_result(task_id, timeout=60) for task_id in ids] == [2**i for i in range(20)]
    finally:
        q.close()
        stop(workers)


def test_a_timeout_in_place_is_worded_as_on_the_loop(tmp_path: Path) -> None:
    with OmniQ(Settings(base_dir=tmp_path, procs=1)) as q:
        later = q.enqueue(pow, 2, 9, eta=timedelta(hours=1))
        with pytest.raises(ResultTimeoutError, match=r"within 0.2s: it is PENDING"):
            q.get_result(later, timeout=0.2)
        with pytest.raises(TaskNotFoundError, match="no task with id 'no-such-task'"):
            q.get_result("no-such-task", timeout=5)


def test_more_waiting_threads_than_places_all_get_their_results(tmp_path: Path) -> None:
    with OmniQ(Settings(base_dir=tmp_path, procs=2)) as q:
        places = 0
        while q._async.stored.enter("probe"):  # count the places, then give them back
            places += 1
        for _ in range(places):
            q._async.stored.leave("probe")
        threads = places + 4  # the rest wait through the loop's watcher

        def round_trip(i: int) -> int:
            return int(q.get_result(q.enqueue(pow, 3, i), timeout=60))

        with ThreadPoolExecutor(threads) as pool:
            assert list(pool.map(round_trip, range(threads * 3))) == [
                3**i for i in range(threads * 3)
            ]
        assert [q._async.stored.enter("probe") for _ in range(places)] == [True] * places
