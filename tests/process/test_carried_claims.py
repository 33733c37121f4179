"""Claims carried by outcomes (SQLite and PostgreSQL): a supervisor draining short tasks
stores their outcomes and claims its next tasks in one transaction. Every task still runs
once, and ``process_tasks(limit=)`` still claims no more than its limit and leaves nothing
held; an outcome carries no claim once a claim has found the queue empty."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from omniq_mp import AsyncOmniQ, Settings
from omniq_mp.models import Task
from omniq_mp.storage.base import Storage
from omniq_mp.storage.capabilities import CarriesClaims
from tests.contract.backends import BACKENDS, backend_params, drop_created_schemas

pytestmark = pytest.mark.process


@dataclass
class Claims:
    """The sizes of the claims a store made alone and of those carried by outcomes."""

    storage: Storage
    alone: list[int] = field(default_factory=list)
    carried: list[int] = field(default_factory=list)


def counted(storage: Storage) -> Claims:
    """``storage`` with its claims counted (its methods wrapped on the instance)."""
    assert isinstance(storage, CarriesClaims)
    claims = Claims(storage)
    claim, together = storage.claim, storage.settle_and_claim

    async def claim_alone(*args: Any, **kwargs: Any) -> list[Task]:
        tasks = await claim(*args, **kwargs)
        claims.alone.append(len(tasks))
        return tasks

    async def claim_carried(*args: Any, **kwargs: Any) -> tuple[list[bool], list[Task]]:
        applied, tasks = await together(*args, **kwargs)
        claims.carried.append(len(tasks))
        return applied, tasks

    storage.claim = claim_alone  # type: ignore[method-assign]
    storage.settle_and_claim = claim_carried  # type: ignore[method-assign]
    return claims


@pytest.fixture(params=backend_params(["sqlite", "postgres"]))
def claims(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Claims]:
    """A store of each kind that can carry claims, its claims counted."""
    yield counted(BACKENDS[request.param](tmp_path))
    drop_created_schemas()


def noop() -> int:
    return 1


async def drain(tmp_path: Path, claims: Claims, queued: int, limit: int) -> Any:
    q = AsyncOmniQ(Settings(base_dir=tmp_path, procs=2), storage=claims.storage)
    await q.open()
    try:
        for start in range(0, queued, 500):
            await q.enqueue_tasks([q.build(noop) for _ in range(min(500, queued - start))])
        async with q.worker_pool() as workers:
            assert await workers.process_tasks(limit=limit) == limit
            assert not workers._held  # nothing claimed is kept past the call
        return await q.stats()
    finally:
        await q.close()


async def test_a_drain_carries_claims_in_its_settles_and_runs_every_task_once(
    tmp_path: Path, claims: Claims
) -> None:
    stats = await drain(tmp_path, claims, queued=1500, limit=1500)
    assert stats.completed == 1500
    assert (stats.pending, stats.running, stats.failed) == (0, 0, 0)
    assert sum(claims.carried) > 0, "no claim was carried by outcomes"
    assert sum(claims.alone) + sum(claims.carried) == 1500  # each task claimed once


async def test_a_limit_holds_with_carried_claims(tmp_path: Path, claims: Claims) -> None:
    stats = await drain(tmp_path, claims, queued=1500, limit=600)
    assert sum(claims.carried) > 0, "no claim was carried by outcomes"
    assert sum(claims.alone) + sum(claims.carried) == 600  # never past the limit
    assert (stats.completed, stats.pending, stats.running) == (600, 900, 0)


async def test_an_outcome_carries_no_claim_once_a_claim_found_the_queue_empty(
    tmp_path: Path, claims: Claims
) -> None:
    # Tasks one at a time (a notebook's enqueue and get_result): each claim comes back
    # short, so each outcome commits alone instead of first claiming nothing.
    q = AsyncOmniQ(Settings(base_dir=tmp_path, procs=2), storage=claims.storage)
    await q.open()
    try:
        async with q.worker_pool() as workers:
            job = asyncio.create_task(workers.process_tasks(limit=5))
            for _ in range(5):
                assert await q.get_result(await q.enqueue(noop), timeout=30) == 1
            assert await job == 5
    finally:
        await q.close()
    assert sum(claims.alone) == 5
    assert claims.carried == []
