"""The result watcher outlives a store that fails for a while: a waiter on a task still
gets its outcome once reads work again, instead of waiting for ever."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from omniq_mp.errors import ClientClosedError, StorageError
from omniq_mp.models import Task, TaskStatus, create_task
from omniq_mp.watcher import ResultWatcher


async def test_reads_that_fail_for_a_while_do_not_end_the_watch() -> None:
    finished = create_task("math.sqrt", status=TaskStatus.COMPLETED)
    reads = 0

    async def get_many(ids: Sequence[str]) -> list[Task]:
        nonlocal reads
        reads += 1
        if reads <= 3:  # a lost connection, a side file that cannot be read now
            raise StorageError("database is locked")
        return [finished]

    watcher = ResultWatcher(get_many)
    outcome: asyncio.Future[Task | ClientClosedError | None] = (
        asyncio.get_running_loop().create_future()
    )
    watcher.watch(finished.id, lambda _id, got: outcome.set_result(got))
    assert await asyncio.wait_for(outcome, timeout=10) is finished
    assert reads == 4
    await watcher.close()
