"""Result and event storage chosen by configuration alone, on every backend, end to end
with real workers; servers that are down or go away mid-run."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from omniq_mp import OmniQ, Settings, TaskStatus
from omniq_mp.eventstore import EventType
from tests.e2e.conftest import cli_env
from tests.own_servers import OwnRedis
from tests.services import require
from tests.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.process]

KINDS = [
    pytest.param("memory", id="memory"),
    pytest.param("file", id="file"),
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
    pytest.param("nats", id="nats", marks=pytest.mark.nats),
]
SERVER = {"postgres": "postgres", "redis": "redis", "nats": "nats"}


def configured(kind: str, base_dir: Path) -> Settings:
    """Only the storage *type*: every address is the kind's default (a local server on
    its standard port), except PostgreSQL's database, which is this machine's `test`."""
    if kind in SERVER:
        require(SERVER[kind])
    extra: dict[str, Any] = {}
    if kind == "postgres":
        dsn = require("postgres").url
        extra = {"result_storage_dsn": dsn, "event_storage_dsn": dsn}
    return Settings(
        base_dir=base_dir,
        procs=1,
        result_storage_type=kind,
        event_storage_type=kind,
        **extra,
    )


@pytest.mark.parametrize("kind", KINDS)
def test_results_and_events_go_where_configured(kind: str, tmp_path: Path) -> None:
    settings = configured(kind, tmp_path / "store")
    with OmniQ(settings) as q:
        ids = [q.enqueue(lambda x: {"square": x * x}, n) for n in range(3)]
        failing = q.enqueue(lambda: 1 / 0, max_retries=0)
        try:
            assert [q.get_result(i, timeout=30) for i in ids] == [
                {"square": n * n} for n in range(3)
            ]
            with pytest.raises(Exception, match="division by zero"):
                q.get_result(failing, timeout=30)

            # The supervisor copies outcomes to the result store in the background.
            def copied() -> bool:
                return all(q.get_stored_result(i) is not None for i in [*ids, failing])

            wait_for(copied, 15, f"the results to reach the {kind} result store")
            stored = q.get_stored_result(failing)
            assert stored is not None and stored.status is TaskStatus.FAILED
            assert stored.error is not None and stored.error.error_type == "ZeroDivisionError"

            kinds = [e.event_type for e in q.get_events(ids[0])]
            assert kinds[0] is EventType.ENQUEUED and kinds[-1] is EventType.COMPLETED

            # Once the queue store forgets the task, get_result still finds its result.
            time.sleep(0.01)  # purge takes tasks finished more than older_than ago
            assert q.purge(older_than=0.005) == 4 and q.get_task(ids[1]) is None
            assert q.get_result(ids[1], timeout=5) == {"square": 1}
        finally:
            _cleanup(q, [*ids, failing])


def test_a_folder_given_for_sqlite_stores_holds_their_files(tmp_path: Path) -> None:
    # The *_base_dir spellings invite a folder: SQLite would refuse to open one.
    events_dir, results_dir = tmp_path / "events", tmp_path / "results"
    events_dir.mkdir()
    results_dir.mkdir()
    settings = Settings(
        base_dir=tmp_path / "store",
        procs=1,
        event_storage_type="sqlite",
        event_storage_base_dir=events_dir,
        result_storage_type="sqlite",
        result_storage_base_dir=results_dir,
    )
    with OmniQ(settings) as q:
        task_id = q.enqueue(pow, 2, 10)
        assert q.get_result(task_id, timeout=30) == 1024
        wait_for(lambda: q.get_stored_result(task_id) is not None, 15, "the stored result")
        kinds = [e.event_type for e in q.get_events(task_id)]
        assert kinds[0] is EventType.ENQUEUED and kinds[-1] is EventType.COMPLETED
    assert (events_dir / "events.db").is_file() and (results_dir / "results.db").is_file()


def _run(q: OmniQ, coro: Any) -> Any:
    return q._loop.call(coro)


def _cleanup(q: OmniQ, ids: list[str]) -> None:
    # The default names live on the machine's shared servers: take back what we wrote.
    if q._async.result_storage is not None:
        _run(q, q._async.result_storage.delete(ids))
    events = q._async.event_storage
    if events is not None and q.settings.event_storage_type in SERVER and hasattr(events, "drop"):
        _run(q, _drop_after_close(q, events))


async def _drop_after_close(q: OmniQ, events: Any) -> None:
    # The client is closed first, so its last events (those of the supervisor stopping)
    # are written before the drop: written after it, each would fail and be retried for
    # close()'s whole patience.
    await q._async.close()
    await events.open()
    try:
        await events.drop()
    finally:
        await events.close()


@pytest.mark.parametrize(
    ("env", "where"),
    [
        pytest.param(
            {"OMNIQ_BACKEND": "postgres", "OMNIQ_DSN": "postgresql://u:s3cret@127.0.0.1:1/x"},
            "127.0.0.1:1",
            id="postgres-queue",
        ),
        pytest.param(
            {
                "OMNIQ_RESULT_STORAGE_TYPE": "redis",
                "OMNIQ_RESULT_STORAGE_URL": "redis://:s3cret@127.0.0.1:1/0",
            },
            "127.0.0.1:1",
            id="redis-results",
        ),
        pytest.param(
            {
                "OMNIQ_EVENT_STORAGE_TYPE": "nats",
                "OMNIQ_EVENT_STORAGE_URL": "nats://user:s3cret@127.0.0.1:1",
            },
            "127.0.0.1:1",
            id="nats-events",
        ),
    ],
)
def test_an_unreachable_server_at_start_is_one_line_exit_1(
    tmp_path: Path, env: dict[str, str], where: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "omniq_mp", "workers", "--burst", "--procs", "1"],
        env=cli_env(tmp_path / "store", **env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert where in lines[0] and "s3cret" not in done.stderr and "Traceback" not in done.stderr


def test_the_config_file_option_of_the_command(tmp_path: Path) -> None:
    config = tmp_path / "omniq.yaml"
    config.write_text(f"base_dir: {tmp_path / 'from-file'}\nprocs: 1\n")
    env = cli_env(tmp_path / "ignored")
    env.pop("OMNIQ_BASE_DIR", None)  # let the file say where the store is
    status = subprocess.run(
        [sys.executable, "-m", "omniq_mp", "--config", str(config), "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0, status.stderr
    assert f"sqlite at {tmp_path / 'from-file'}" in status.stdout
    config.write_text("procz: 1\n")
    bad = subprocess.run(
        [sys.executable, "-m", "omniq_mp", "--config", str(config), "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "unknown setting(s) procz" in bad.stderr


@pytest.mark.redis
def test_a_result_store_restart_mid_run_loses_no_result(
    own_redis: OwnRedis, tmp_path: Path
) -> None:
    own_redis.start()
    asyncio.run(own_redis.ready())
    settings = Settings(
        base_dir=tmp_path / "store",
        procs=2,
        result_storage_type="redis",
        result_storage_url=own_redis.url,
    )
    with OmniQ(settings) as q:
        first = [q.enqueue(lambda x: x + 1, n) for n in range(50)]
        assert [q.get_result(i, timeout=30) for i in first] == list(range(1, 51))
        own_redis.stop()
        # The result store is gone: tasks still run, and results are still readable.
        second = [q.enqueue(lambda x: x * 10, n) for n in range(50)]
        assert [q.get_result(i, timeout=30) for i in second] == [n * 10 for n in range(50)]
        own_redis.start()
        asyncio.run(own_redis.ready())

        def all_copied() -> bool:
            found = _run(q, q._async.result_storage.get_many([*first, *second]))  # type: ignore[union-attr]
            return len(found) == 100

        wait_for(all_copied, 30, "every result to reach the restarted result store")
