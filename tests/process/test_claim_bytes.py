"""How the supervisor bounds its claims in bytes: idle workers get their tasks at once,
whatever their size; what waits beyond them stays within ``Pacer.BUFFER_BYTES``."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import pytest

from omniq_mp import AsyncOmniQ, LargePayloadWarning, Settings
from omniq_mp.models import Task
from omniq_mp.storage.memory import MemoryStorage
from omniq_mp.worker import Pacer

pytestmark = pytest.mark.process

BIG = 40 * 2**20  # two of them overflow the buffer


class ClaimLog(MemoryStorage):
    """Records each claim that found tasks: (min_tasks, how many came)."""

    def __init__(self) -> None:
        super().__init__()
        self.claims: list[tuple[int, int]] = []

    async def claim(
        self,
        queues: Sequence[str],
        limit: int,
        now: float,
        lease_until: float,
        worker_id: str,
        max_bytes: int | None = None,
        min_tasks: int = 1,
    ) -> list[Task]:
        tasks = await super().claim(
            queues, limit, now, lease_until, worker_id, max_bytes, min_tasks
        )
        if tasks:
            self.claims.append((min_tasks, len(tasks)))
        return tasks


async def test_every_idle_worker_gets_a_large_task_from_one_claim(tmp_path: Path) -> None:
    warnings.simplefilter("ignore", LargePayloadWarning)  # large on purpose
    storage = ClaimLog()
    q = AsyncOmniQ(Settings(base_dir=tmp_path, procs=4), storage=storage)
    ids = [await q.enqueue(len, bytes(BIG)) for _ in range(6)]
    async with q.worker_pool() as workers:
        assert await workers.process_tasks(limit=6) == 6
    assert [await q.get_result(i, timeout=30) for i in ids] == [BIG] * 6
    await q.close()
    # The first claim fed the four idle workers in one go, though 160 MiB is far over
    # the buffer (a bound on them would have started one or two workers per claim), and
    # held back what would not fit beyond them.
    min_tasks, came = storage.claims[0]
    assert min_tasks == 4 and came == 4 + Pacer.BUFFER_BYTES // BIG, storage.claims
