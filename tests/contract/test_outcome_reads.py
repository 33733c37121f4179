"""Reads for waiters: stores that can leave payloads out (``get_outcomes``) give every
other field as ``get_many`` does, so a client waiting on a task with a 100 MiB payload
does not read the payload again at every look."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from omniq_mp.models import Settlement, TaskStatus
from omniq_mp.storage.base import Storage
from omniq_mp.storage.capabilities import ReadsOutcomes
from omniq_mp.storage.sqlite import SQLiteStorage
from tests.contract.test_storage_contract import NOW, claim, make

BIG = b"x" * 300_000  # past a page: SQLite keeps it in overflow pages


@pytest.mark.parametrize("store", ["sqlite", "file", "postgres"], indirect=True)
async def test_outcomes_are_the_tasks_without_their_payloads(store: Storage) -> None:
    running, done = make(payload=BIG), make(payload=BIG)
    await store.enqueue([running, done])
    [_, b] = await claim(store)
    ok = Settlement(b.id, b.lease_token or "", TaskStatus.COMPLETED, result=b"r", finished_at=NOW)
    assert await store.settle([ok]) == [True]
    full = await store.get_many([running.id, done.id])
    assert isinstance(store, ReadsOutcomes)
    read = await store.get_outcomes([running.id, done.id, "no-such-task"])
    assert len(full) == 2
    assert sorted(read, key=lambda t: t.id) == sorted(
        (dataclasses.replace(t, payload=b"") for t in full), key=lambda t: t.id
    )


async def test_the_sync_clients_look_leaves_the_payload_out_too(tmp_path: Path) -> None:
    store = SQLiteStorage(tmp_path / "omniq.db")
    await store.open()
    try:
        task = make(payload=BIG)
        await store.enqueue([task])
        assert store.get_blocking(task.id) == dataclasses.replace(task, payload=b"")
    finally:
        await store.close()
