"""Tasks that fall due later (an ETA, a retry's backoff) start at that time, not at an
idle supervisor's next poll. Each supervisor here polls only every 5 s or slower, so a
result within 4 s of its due time can only come from the wake-up at that time."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest

from omniq_mp import OmniQ, Settings
from omniq_mp.storage.postgres import PostgresStorage
from omniq_mp.storage.postgres_sql import channel_for
from tests.e2e.conftest import start_workers
from tests.waiting import wait_for

pytestmark = pytest.mark.e2e

SLOW_POLL = 5.0  # seconds; idle, the poll backs off further, to 8 times this
WITHIN = 4.0  # seconds after the due time a result must be back


def fail_once(marker: str) -> float:
    """Raise on the first call (per marker file), then return the time it ran."""
    path = Path(marker)
    if not path.exists():
        path.write_text("failed once")
        raise RuntimeError("first attempt fails")
    return time.time()


def assert_an_eta_task_starts_on_time(q: OmniQ) -> None:
    """Once a supervisor has run a first task and gone idle, a task due in 0.5 s comes back
    within ``WITHIN`` seconds of that time, and never starts early."""
    q.get_result(q.enqueue(time.time), timeout=60)
    due = time.time() + 0.5
    task_id = q.enqueue(time.time, eta=timedelta(seconds=0.5))
    ran = q.get_result(task_id, timeout=0.5 + WITHIN)
    assert ran >= due


def test_an_eta_task_of_an_embedded_supervisor_starts_at_its_eta(tmp_path: Path) -> None:
    with OmniQ(Settings(base_dir=tmp_path, procs=1, poll_interval=SLOW_POLL)) as q:
        assert_an_eta_task_starts_on_time(q)


def test_a_producer_in_another_process_wakes_the_supervisor_at_the_eta(tmp_path: Path) -> None:
    workers = start_workers(tmp_path, "--procs", "1", OMNIQ_POLL_INTERVAL=str(SLOW_POLL))
    settings = Settings(base_dir=tmp_path)  # a producer only: the supervisor is elsewhere
    q = OmniQ(settings)
    try:
        # Pokes go to the supervisors announced when the producer lists the wake folder
        # (the listing is kept half a second): enqueue once this one has announced itself.
        wake_dir = settings.wake_dir
        assert wake_dir is not None
        wait_for(
            lambda: wake_dir.is_dir() and any(n.startswith("s-") for n in os.listdir(wake_dir)),
            30,
            "the supervisor to announce its wake-up socket",
        )
        assert_an_eta_task_starts_on_time(q)
    finally:
        q.close()
        workers.terminate()
        workers.communicate(timeout=30)


NO_POLL = 60.0  # seconds: a supervisor that only polled would be a minute late or more


def test_a_task_stored_with_an_eta_before_the_supervisor_started_runs_at_its_eta(
    tmp_path: Path,
) -> None:
    # No wake-up can announce it: its producer poked nobody (no supervisor was up). The
    # idle supervisor asks the store when the next task falls due and sleeps until then.
    q = OmniQ(Settings(base_dir=tmp_path))  # a producer only
    try:
        due = time.time() + 3.0
        task_id = q.enqueue(time.time, eta=timedelta(seconds=3.0))
        workers = start_workers(tmp_path, "--procs", "1", OMNIQ_POLL_INTERVAL=str(NO_POLL))
        try:
            ran = q.get_result(task_id, timeout=3.0 + WITHIN)
            assert due <= ran <= due + WITHIN
        finally:
            workers.terminate()
            workers.communicate(timeout=30)
    finally:
        q.close()


def test_every_eta_of_a_batch_is_kept_not_only_the_earliest(tmp_path: Path) -> None:
    # An enqueue's wake-up carries the batch's earliest ETA; once that task ran and the
    # supervisor is idle again, the store tells it when the next one falls due.
    with OmniQ(Settings(base_dir=tmp_path, procs=1, poll_interval=NO_POLL)) as q:
        q.get_result(q.enqueue(time.time), timeout=60)
        now = time.time()
        ids = q.enqueue_tasks(
            [q.build(time.time, eta=timedelta(seconds=delay)) for delay in (0.5, 1.5, 2.5)]
        )
        for task_id, delay in zip(ids, (0.5, 1.5, 2.5), strict=True):
            ran = q.get_result(task_id, timeout=delay + WITHIN)
            assert now + delay <= ran <= now + delay + WITHIN


def test_a_retry_starts_after_its_backoff_not_at_the_next_idle_poll(tmp_path: Path) -> None:
    settings = Settings(
        base_dir=tmp_path, procs=1, poll_interval=SLOW_POLL, retry_delay=0.5, max_retries=1
    )
    with OmniQ(settings) as q:
        q.get_result(q.enqueue(time.time), timeout=30)
        began = time.time()
        task_id = q.enqueue(fail_once, str(tmp_path / "marker"))
        # The backoff is 0.5 s with up to 25% jitter either way.
        ran = q.get_result(task_id, timeout=0.625 + WITHIN)
        assert ran - began >= 0.375
        assert q.get_task(task_id).attempts == 2


@pytest.mark.postgres
def test_a_notify_carries_the_eta_to_a_postgres_supervisor(
    tmp_path: Path, postgres_dsn: str
) -> None:
    # PostgreSQL supervisors hear of work through LISTEN/NOTIFY, from any host: the
    # enqueue's notification carries the earliest ETA of its tasks.
    schema = f"omniq_eta_{uuid.uuid4().hex[:8]}"
    env = {"OMNIQ_POLL_INTERVAL": str(SLOW_POLL), "OMNIQ_POSTGRES_SCHEMA": schema}
    workers = start_workers(tmp_path, "--procs", "1", "--backend", "postgres",
                            "--dsn", postgres_dsn, **env)  # fmt: skip
    settings = Settings(
        base_dir=tmp_path, backend="postgres", dsn=postgres_dsn, postgres_schema=schema
    )
    q = OmniQ(settings)
    try:
        # A notification sent before the supervisor listens is lost (it then claims on
        # connecting, without the ETA): wait until it listens.
        wait_for(lambda: asyncio.run(_listening(postgres_dsn, schema)), 60, "LISTEN")
        assert_an_eta_task_starts_on_time(q)
    finally:
        q.close()
        workers.terminate()
        workers.communicate(timeout=30)
        asyncio.run(PostgresStorage(postgres_dsn, schema=schema).drop())


async def _listening(dsn: str, schema: str) -> bool:
    """Whether a session LISTENs on the schema's work channel (its last statement)."""
    conn = await asyncpg.connect(dsn)
    try:
        found = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE query = $1",
            f'LISTEN "{channel_for(schema)}"',
        )
    finally:
        await conn.close()
    return bool(found)
