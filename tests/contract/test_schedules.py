"""Cron schedules: stored, paused, and fired exactly once per due time by any number of
supervisors sharing a store."""

from __future__ import annotations

import asyncio
import multiprocessing
import random
from pathlib import Path

import pytest

from omniq_mp.models import create_task
from omniq_mp.schedule import Schedule, next_cron_time
from omniq_mp.storage.base import Storage
from tests.contract.backends import BACKENDS, PERSISTENT, backend_params

T0 = 1_800_000_000.0  # a whole minute


def every_minute(schedule: Schedule, now: float) -> float:
    return next_cron_time(schedule.cron, schedule.tz, now)


def new_schedule(next_run: float = T0) -> Schedule:
    return Schedule(create_task("math.factorial"), "* * * * *", "UTC", next_run=next_run)


async def test_a_due_schedule_fires_once_and_moves_on(store: Storage) -> None:
    schedule = new_schedule()
    await store.add_schedule(schedule)
    assert await store.fire_schedules(T0 - 1, every_minute) == []
    [task_id] = await store.fire_schedules(T0 + 5, every_minute)
    assert await store.fire_schedules(T0 + 5, every_minute) == []
    task = await store.get(task_id)
    assert task is not None and task.eta == T0 and task.func_name == "math.factorial"
    [stored] = await store.schedules()
    assert stored.next_run == T0 + 60 and stored.last_task_id == task_id


async def test_missed_due_times_fire_once_not_once_each(store: Storage) -> None:
    await store.add_schedule(new_schedule())
    assert len(await store.fire_schedules(T0 + 3600, every_minute)) == 1
    [stored] = await store.schedules()
    assert stored.next_run == T0 + 3660


async def test_paused_schedules_do_not_fire_until_resumed(store: Storage) -> None:
    schedule = new_schedule()
    await store.add_schedule(schedule)
    paused = await store.set_paused(schedule.id, True)
    assert paused is not None and paused.paused
    assert await store.fire_schedules(T0 + 5, every_minute) == []
    await store.set_paused(schedule.id, False)
    assert len(await store.fire_schedules(T0 + 5, every_minute)) == 1
    assert await store.set_paused("sch-unknown", True) is None
    assert await store.remove_schedule(schedule.id) is True
    assert await store.schedules() == []


def _fire_in_child(backend: str, folder: str, minutes: int, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    async def run() -> list[str]:
        store = BACKENDS[backend](Path(folder))
        await store.open()
        fired: list[str] = []
        for minute in range(minutes):
            now = T0 + 60 * minute + 1
            await asyncio.sleep(random.uniform(0, 0.01))
            fired += await store.fire_schedules(now, every_minute)
        await store.close()
        return fired

    out.put(asyncio.run(run()))


@pytest.mark.parametrize("backend", backend_params(PERSISTENT))
async def test_two_supervisors_fire_each_due_time_exactly_once(
    backend: str, tmp_path: Path
) -> None:
    store = BACKENDS[backend](tmp_path)
    await store.open()
    await store.add_schedule(new_schedule())
    await store.close()
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    minutes = 30
    procs = [
        ctx.Process(target=_fire_in_child, args=(backend, str(tmp_path), minutes, out))
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    fired = out.get(timeout=60) + out.get(timeout=60)
    for p in procs:
        p.join(10)
    store = BACKENDS[backend](tmp_path)
    await store.open()
    etas = sorted([(await store.get(t)).eta for t in fired])  # type: ignore[union-attr]
    await store.close()
    assert etas == [T0 + 60 * m for m in range(minutes)]  # each due time once, none lost
