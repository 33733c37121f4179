"""The CLI on a PostgreSQL queue in a schema of its own: ``--schema`` on every command,
and what ``top`` and a timeout say about where the queue is."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from omniq_mp import OmniQ, ResultTimeoutError, Settings, TaskStatus
from omniq_mp.storage.postgres import PostgresStorage
from tests.e2e.conftest import Cli

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]


@pytest.fixture
def schema(postgres_dsn: str) -> Iterator[str]:
    """A schema of its own on the shared server, dropped afterwards."""
    name = f"omniq_cli_{uuid.uuid4().hex[:8]}"
    yield name
    asyncio.run(PostgresStorage(postgres_dsn, schema=name).drop())


def test_schema_without_a_postgres_backend_is_a_usage_error(omniq: Cli) -> None:
    done = omniq("status", "--schema", "reports")
    assert done.returncode == 2
    assert "--schema is for a PostgreSQL queue" in done.stderr
    assert "add --backend postgres" in done.stderr


def test_every_command_works_on_the_schema_it_is_given(
    omniq: Cli, postgres_dsn: str, schema: str
) -> None:
    store = ("--backend", "postgres", "--dsn", postgres_dsn, "--schema", schema)
    enqueued = omniq("enqueue", "math.pow", "2", "3", *store)
    assert enqueued.returncode == 0, enqueued.stderr
    task_id = enqueued.stdout.strip()
    drained = omniq("workers", "--procs", "1", "--burst", *store)
    assert drained.returncode == 0, drained.stderr
    result = omniq("result", task_id, *store)
    assert (result.returncode, result.stdout.strip()) == (0, "8.0")
    top = omniq("top", "-n", "1", *store)
    assert top.returncode == 0, top.stderr
    assert f"postgres {postgres_dsn} schema {schema}" in top.stdout.splitlines()[0]
    q = OmniQ(Settings(backend="postgres", dsn=postgres_dsn, postgres_schema=schema))
    try:
        task = q.get_task(task_id)
        assert task is not None and task.status is TaskStatus.COMPLETED
        assert q.get_result(task_id, timeout=0) == 8.0
    finally:
        q.close()


def test_a_timeout_says_how_to_start_a_worker_on_this_queue(
    postgres_dsn: str, schema: str, tmp_path: Path
) -> None:
    q = OmniQ(
        Settings(base_dir=tmp_path, backend="postgres", dsn=postgres_dsn, postgres_schema=schema)
    )
    try:
        task_id = q.enqueue(abs, -1)
        with pytest.raises(ResultTimeoutError) as raised:
            q.get_result(task_id, timeout=0)
        flags = f"--backend postgres --dsn '{postgres_dsn}' --schema {schema}"
        assert f"start one with `omniq-mp workers {flags}`" in str(raised.value)
    finally:
        q.close()
