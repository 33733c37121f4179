"""The SQLite claim stays one statement that reads indexes, never the whole table."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from omniq_mp.models import Task, create_task
from omniq_mp.storage.sqlite import SQLiteStorage
from omniq_mp.storage.sqlite_codec import (
    claim_sizes_statement,
    claim_statement,
    next_due_statement,
)


async def plan_of(tmp_path: Path, tasks: list[Task], sql: str, params: list[Any]) -> list[str]:
    """The query plan's steps for ``sql`` over a store holding ``tasks``, analysed as a
    store that has run a while would be."""
    store = SQLiteStorage(tmp_path / "omniq.db")
    await store.open()
    await store.enqueue(tasks)
    await store.close()
    conn = sqlite3.connect(tmp_path / "omniq.db")
    try:
        conn.execute("ANALYZE")
        return [row[-1] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
    finally:
        conn.close()


@pytest.mark.parametrize("queue_count", [1, 3])
async def test_claim_plan_uses_the_claimable_index_for_every_queue(
    tmp_path: Path, queue_count: int
) -> None:
    now = time.time()
    params = [
        "tok", now + 30, "w", now,
        *[v for i in range(queue_count) for v in (f"q{i}", now, 10)],
        10,
    ]  # fmt: skip
    tasks = [create_task("m.f", queue=f"q{i % 3}") for i in range(300)]
    details = await plan_of(tmp_path, tasks, claim_statement(queue_count), params)
    index_reads = [d for d in details if "tasks_claimable" in d]
    assert len(index_reads) == queue_count, details
    # No full scan of the tasks table anywhere in the statement.
    assert not [d for d in details if d.startswith("SCAN tasks") and "INDEX" not in d], details


@pytest.mark.parametrize("queue_count", [1, 3])
async def test_a_bounded_claims_size_read_uses_the_claimable_index_for_every_queue(
    tmp_path: Path, queue_count: int
) -> None:
    now = time.time()
    params = [*[v for i in range(queue_count) for v in (f"q{i}", now, 10)], 10]
    tasks = [create_task("m.f", queue=f"q{i % 3}") for i in range(300)]
    details = await plan_of(tmp_path, tasks, claim_sizes_statement(queue_count), params)
    assert len([d for d in details if "tasks_claimable" in d]) == queue_count, details
    assert not [d for d in details if d.startswith("SCAN tasks") and "INDEX" not in d], details


@pytest.mark.parametrize("queue_count", [1, 3])
async def test_next_due_seeks_the_claimable_index_never_scans_the_table(
    tmp_path: Path, queue_count: int
) -> None:
    now = time.time()
    tasks = [create_task("m.f", queue=f"q{i % 3}", priority=i % 4, eta=now + i) for i in range(300)]
    params = [*(f"q{i}" for i in range(queue_count)), now]
    details = await plan_of(tmp_path, tasks, next_due_statement(queue_count), params)
    reads = [d for d in details if d.startswith(("SEARCH t", "SCAN t"))]
    # SEARCH: index seeks; a SCAN, even of the index, would read every pending entry.
    assert reads and all(d.startswith("SEARCH t") and "tasks_claimable" in d for d in reads)
