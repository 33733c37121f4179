"""``settle_and_claim`` (SQLite, PostgreSQL): outcomes stored and the next tasks claimed
in one transaction, each part answering as settle and claim would, and neither without
the other."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from omniq_mp.errors import StorageError
from omniq_mp.models import Settlement, Task, TaskStatus, create_task
from omniq_mp.storage.postgres import PostgresStorage
from omniq_mp.storage.sqlite import SQLiteStorage
from tests.contract.backends import BACKENDS, backend_params

NOW = 1_000.0
LEASE = NOW + 30

Store = SQLiteStorage | PostgresStorage


@pytest.fixture(params=backend_params(["sqlite", "postgres"]))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """A store of each kind that can carry claims."""
    s = BACKENDS[request.param](tmp_path)
    assert isinstance(s, SQLiteStorage | PostgresStorage)
    await s.open()
    yield s
    await s.close()


def break_claims(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the store's claim statement fail as a damaged database would."""
    if isinstance(store, SQLiteStorage):

        def broken(*_: Any) -> list[Any]:
            raise sqlite3.DatabaseError("database disk image is malformed")

        monkeypatch.setattr(store, "_rows_with_side_files", broken)
    else:
        wrong = "SELECT * FROM no_such_table_malformed"  # a relation that is not there
        monkeypatch.setattr(type(store._sql), "claim", property(lambda _: wrong))


async def running_and_pending(store: Store) -> tuple[Task, list[Task]]:
    """One task claimed (RUNNING), then three pending, the last of them most urgent."""
    await store.enqueue([create_task("math.sqrt", eta=0.0)])
    [running] = await store.claim(["default"], 1, NOW, LEASE, "w1")
    pending = [create_task("math.sqrt", eta=0.0, priority=p) for p in (0, 0, 5)]
    await store.enqueue(pending)
    return running, pending


def done(task: Task, token: str | None = None) -> Settlement:
    lease = task.lease_token or "" if token is None else token
    return Settlement(task.id, lease, TaskStatus.COMPLETED, result=b"r", finished_at=NOW)


async def test_outcomes_are_stored_and_the_claim_comes_in_claim_order(
    store: Store,
) -> None:
    running, pending = await running_and_pending(store)
    applied, claimed = await store.settle_and_claim(
        [done(running)], ["default"], 2, NOW, LEASE, "w2"
    )
    assert applied == [True]
    assert [t.id for t in claimed] == [pending[2].id, pending[0].id]  # priority, then FIFO
    settled = await store.get(running.id)
    assert settled is not None and settled.status is TaskStatus.COMPLETED
    assert settled.result == b"r" and settled.lease_token is None
    for task in claimed:
        stored = await store.get(task.id)
        assert stored is not None and stored.status is TaskStatus.RUNNING
        assert (stored.worker_id, stored.lease_until) == ("w2", LEASE)
        assert stored.lease_token == task.lease_token and stored.attempts == 1
    left = await store.get(pending[1].id)
    assert left is not None and left.status is TaskStatus.PENDING


async def test_a_fenced_outcome_is_refused_and_the_claim_still_made(
    store: Store,
) -> None:
    running, pending = await running_and_pending(store)
    applied, claimed = await store.settle_and_claim(
        [done(running, token="stale")], ["default"], 5, NOW, LEASE, "w2"
    )
    assert applied == [False]
    assert len(claimed) == len(pending)
    kept = await store.get(running.id)
    assert kept is not None and kept.status is TaskStatus.RUNNING


async def test_no_room_to_claim_only_settles(store: Store) -> None:
    running, pending = await running_and_pending(store)
    assert await store.settle_and_claim([done(running)], ["default"], 0, NOW, LEASE, "w2") == (
        [True],
        [],
    )
    assert (await store.stats(None, NOW)).pending == len(pending)


async def test_a_failing_claim_rolls_the_outcomes_back_with_it(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    running, pending = await running_and_pending(store)

    break_claims(store, monkeypatch)
    with pytest.raises(StorageError, match="malformed"):
        await store.settle_and_claim([done(running)], ["default"], 5, NOW, LEASE, "w2")
    monkeypatch.undo()
    kept = await store.get(running.id)
    assert kept is not None and kept.status is TaskStatus.RUNNING  # the outcome is not in
    assert kept.lease_token == running.lease_token
    assert (await store.stats(None, NOW)).pending == len(pending)  # nor the claim
    # Nothing is stuck: the same call goes through once the store reads again.
    applied, claimed = await store.settle_and_claim(
        [done(running)], ["default"], 5, NOW, LEASE, "w2"
    )
    assert applied == [True] and len(claimed) == len(pending)
