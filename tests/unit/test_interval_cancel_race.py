"""``cancel`` of an interval series when the run it reaches finishes at that moment: the
next run, stored by that finish, is the one to cancel."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from omniq_mp import AsyncOmniQ, Settings
from omniq_mp.models import Outcome, OutcomeKind, Task, TaskStatus
from omniq_mp.serialization import dumps_result
from omniq_mp.storage.memory import MemoryStorage

HOUR = 3600.0


class FinishingAsCancelled(MemoryStorage):
    """A store where the first RUNNING task a cancel reaches completes just before it."""

    def __init__(self) -> None:
        super().__init__()
        self.finish: Callable[[Task], Awaitable[None]] | None = None

    async def cancel(self, task_id: str, now: float) -> Task | None:
        task = await self.get(task_id)
        if self.finish is not None and task is not None and task.status is TaskStatus.RUNNING:
            finish, self.finish = self.finish, None
            await finish(task)
        return await super().cancel(task_id, now)


async def test_cancel_follows_the_series_past_a_run_finishing_under_it(tmp_path: Path) -> None:
    storage = FinishingAsCancelled()
    q = AsyncOmniQ(Settings(base_dir=tmp_path), storage=storage)

    async def run(now: float) -> Task:
        [task] = await storage.claim(["default"], 1, now, now + 60, "w1")
        return task

    async def complete(task: Task) -> None:
        outcome = Outcome(OutcomeKind.SUCCEEDED, dumps_result(None))
        await storage.settle([q.queue.settlement(task, outcome)])

    try:
        first = await q.enqueue(time.time, interval=HOUR)
        await complete(await run(time.time()))
        second = await run(time.time() + 2 * HOUR)  # the next run, due in an hour, under way
        storage.finish = complete
        assert await q.cancel(first) is True
        assert storage.finish is None  # the second run did finish under the cancel
        stats = await q.stats()
        assert (stats.completed, stats.cancelled, stats.unfinished) == (2, 1, 0)
        assert (await q.get_task(second.id)).status is TaskStatus.COMPLETED  # type: ignore[union-attr]
    finally:
        await q.close()
