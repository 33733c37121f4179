"""Where the Python API meets a user's mistakes and a client's end: bad input is refused
where it enters, with nothing stored; nothing waits for ever on a closed client."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from omniq_mp import ClientClosedError, ConfigError, OmniQ, Settings
from omniq_mp.errors import ResultTimeoutError, TaskCancelledError, TaskNotFoundError
from omniq_mp.models import TaskStatus
from tests.e2e.conftest import task_waiting_for, wait_running
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def q(tmp_path: Path) -> Iterator[OmniQ]:
    client = OmniQ(base_dir=tmp_path / "store")
    yield client
    client.close()


@pytest.mark.parametrize("path", ["nodots", "a b.c", "math..pow", "math.", ".pow", "math:"])
def test_a_path_that_names_no_function_is_refused(q: OmniQ, path: str) -> None:
    with pytest.raises(ConfigError, match="not a dotted path"):
        q.enqueue(path)
    assert q.stats().pending == 0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ({"kwargs": {1: 2}}, "kwargs keys must be argument names"),
        ({"queue": ""}, "queue must be a non-empty string"),
        ({"queue": "a\x00b"}, "queue must not contain a NUL character"),
        ({"key": "a\x00b"}, "key must be a non-empty string without NUL"),
        ({"max_retries": 2**31}, "max_retries must be an int from 0 to 2147483647"),
        ({"eta": datetime.min}, "outside the range of timestamps"),
        ({"tz": "Europe/Berlin"}, "tz= goes with cron="),
        ({"cron": "* * * * *", "eta": timedelta(hours=1)}, "eta= cannot be combined with cron="),
    ],
)
def test_bad_options_are_refused_and_nothing_is_stored(
    q: OmniQ, call: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        q.enqueue("math.factorial", **call)
    assert q.stats().pending == 0
    assert q.periodic() == []


def test_an_argument_named_tz_goes_through_kwargs(q: OmniQ) -> None:
    task_id = q.enqueue("builtins.dict", kwargs={"tz": "UTC"})
    assert q.get_task(task_id) is not None


@pytest.mark.parametrize("timeout", [math.nan, "1", -1])
def test_a_wait_with_a_bad_timeout_is_refused_at_once(q: OmniQ, timeout: Any) -> None:
    task_id = q.enqueue("math.factorial", 3)  # no worker: a good timeout would wait
    began = time.monotonic()
    with pytest.raises(ConfigError, match="timeout must be"):
        q.get_result(task_id, timeout=timeout)
    assert time.monotonic() - began < 5


def test_one_queue_name_or_task_id_may_be_given_as_a_plain_string(q: OmniQ) -> None:
    q.enqueue("math.factorial", 3, queue="reports")
    q.enqueue("math.factorial", 3)
    assert q.stats("reports").pending == 1  # not the queues "r", "e", "p" ...
    assert q.stats(["reports", "default"]).pending == 2
    failed = q.enqueue("math.factorial", -1, max_retries=0)
    with OmniQ(base_dir=q.settings.base_dir, procs=1):
        wait_for(lambda: q.get_task(failed).status is TaskStatus.FAILED, 60, "the failure")  # type: ignore[union-attr]
    assert q.retry(failed) == [failed]
    with pytest.raises(ConfigError, match="limit must be"):
        q.dead("a")  # type: ignore[arg-type]


def test_calls_after_close_say_the_client_is_closed(tmp_path: Path) -> None:
    client = OmniQ(base_dir=tmp_path / "store")
    client.enqueue("math.factorial", 3)
    client.close()
    with pytest.raises(ClientClosedError, match="closed"):
        client.enqueue("math.factorial", 3)
    with pytest.raises(ClientClosedError):
        client.stats()


def test_a_future_of_a_task_unfinished_at_close_raises_instead_of_hanging(
    tmp_path: Path,
) -> None:
    marker = tmp_path / "marker"
    client = OmniQ(base_dir=tmp_path / "store", procs=2, shutdown_grace=0.2).start()
    try:
        unfinished = client.submit(task_waiting_for(marker))
        finished = client.submit(abs, -3)
        assert finished.result(60) == 3
        wait_running(client, unfinished.task_id)
    finally:
        client.close()
        marker.touch()
    with pytest.raises(ClientClosedError, match=unfinished.task_id):
        unfinished.result(10)
    after = OmniQ(base_dir=tmp_path / "store")
    try:  # the task stays stored, handed back to the queue by the graceful stop
        task = after.get_task(unfinished.task_id)
        assert task is not None and task.status is TaskStatus.PENDING
    finally:
        after.close()


def test_cancel_in_another_futures_done_callback_cancels_the_task(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    with OmniQ(base_dir=tmp_path / "store", procs=2) as client:
        slow = client.submit(task_waiting_for(marker))
        fast = client.submit(abs, -1)
        fast.add_done_callback(lambda _: slow.cancel())
        try:
            with pytest.raises(Exception) as raised:
                slow.result(30)
        finally:
            marker.touch()
        assert type(raised.value).__name__ == "CancelledError"
        assert client.get_task(slow.task_id).status is TaskStatus.CANCELLED  # type: ignore[union-attr]


def test_a_task_cancelled_before_it_ran_is_copied_to_the_result_store(tmp_path: Path) -> None:
    settings = Settings(base_dir=tmp_path / "store", result_storage_type="sqlite")
    client = OmniQ(settings)
    try:
        task_id = client.enqueue("math.factorial", 3, eta=timedelta(hours=1))
        assert client.cancel(task_id)
    finally:
        client.close()  # writes what the result writer holds
    reader = OmniQ(settings)
    try:
        assert reader.purge(0.001, statuses="cancelled") == 1  # gone from the queue store
        with pytest.raises(TaskCancelledError):
            reader.get_result(task_id, timeout=1)
    finally:
        reader.close()


def test_an_id_a_result_store_cannot_name_is_simply_not_found(tmp_path: Path) -> None:
    client = OmniQ(base_dir=tmp_path / "store", result_storage_type="file")
    try:
        with pytest.raises(TaskNotFoundError):
            client.get_result("no such/id", timeout=1)
    finally:
        client.close()


def test_a_timeout_names_a_queue_no_live_worker_serves(tmp_path: Path) -> None:
    with OmniQ(base_dir=tmp_path / "store", procs=1, queues=("default",)) as client:
        wait_for(lambda: bool(client.get_worker_stats()), 30, "the worker's heartbeat")
        task_id = client.enqueue("math.factorial", 3, queue="reports")
        with pytest.raises(ResultTimeoutError, match="no live worker serves its queue 'reports'"):
            client.get_result(task_id, timeout=0.2)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"lease_ttl": 0.01}, "lease_ttl must be at least 1 s"),
        ({"postgres_schema": "bad;x"}, "postgres_schema must be letters"),
    ],
)
def test_settings_refuse_what_could_never_work(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings(**settings)


def test_events_can_be_turned_off_from_the_environment() -> None:
    settings = Settings.from_env(environ={"OMNIQ_EVENT_STORAGE_TYPE": "none"})
    assert settings.event_storage_type == "none"


@pytest.mark.parametrize("statuses", ["", ",", []])
def test_a_purge_of_no_status_at_all_is_refused(q: OmniQ, statuses: Any) -> None:
    # It purged nothing and returned 0, as if the purge had worked.
    with pytest.raises(ConfigError, match="give at least one of completed, failed"):
        q.purge("1s", statuses)
