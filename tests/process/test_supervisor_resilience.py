"""The claim loop survives a store that fails for a while (locked, full, unreachable)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from omniq_mp import AsyncOmniQ, Settings
from omniq_mp.errors import StorageError
from omniq_mp.models import Task
from omniq_mp.storage.memory import MemoryStorage

pytestmark = pytest.mark.process


class FlakyStorage(MemoryStorage):
    """Fails the first ``failures`` claims, as a database locked by someone else would."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def claim(
        self, queues: Sequence[str], limit: int, now: float, lease_until: float, worker_id: str
    ) -> list[Task]:
        if self.failures > 0:
            self.failures -= 1
            raise StorageError("database is locked")
        return await super().claim(queues, limit, now, lease_until, worker_id)


async def test_claim_failures_are_retried_not_fatal(tmp_path: Path) -> None:
    storage = FlakyStorage(failures=3)
    q = AsyncOmniQ(Settings(base_dir=tmp_path, procs=1, poll_interval=0.01), storage=storage)
    task_id = await q.enqueue(pow, 3, 4)
    async with q.worker_pool() as workers:
        assert await workers.process_tasks(limit=1) == 1
    assert storage.failures == 0
    assert await q.get_result(task_id, timeout=5) == 81
    await q.close()
