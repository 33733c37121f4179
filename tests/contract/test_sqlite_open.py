"""Several processes creating one new SQLite store at the same moment all succeed (the
switch to WAL is contended and must be retried, not reported as a failure)."""

from __future__ import annotations

import asyncio
import multiprocessing
from pathlib import Path

from omniq_mp.models import create_task
from omniq_mp.storage.sqlite import SQLiteStorage


def _open_and_enqueue(path: str, start: multiprocessing.synchronize.Event) -> None:
    async def main() -> None:
        store = SQLiteStorage(path)
        await store.open()
        try:
            await store.enqueue([create_task("math.sqrt")])
        finally:
            await store.close()

    start.wait(10)
    asyncio.run(main())


async def test_processes_racing_to_create_one_store_all_succeed(tmp_path: Path) -> None:
    for attempt in range(10):  # the race is timing-dependent: give it several chances
        path = tmp_path / f"race{attempt}" / "omniq.db"
        path.parent.mkdir()
        context = multiprocessing.get_context("fork")
        start = context.Event()
        procs = [
            context.Process(target=_open_and_enqueue, args=(str(path), start)) for _ in range(8)
        ]
        for proc in procs:
            proc.start()
        start.set()
        for proc in procs:
            proc.join(60)
        assert [p.exitcode for p in procs] == [0] * 8
        store = SQLiteStorage(path)
        await store.open()
        try:
            assert (await store.stats(None, 0.0)).pending == 8
        finally:
            await store.close()
