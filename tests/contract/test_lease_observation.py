"""``running_leases``: what a supervisor reads, once per recovery scan, to judge other
holders' leases on its own monotonic clock (worker.py ``_dead_leases``).

The contract: every RUNNING task is listed with the token of the attempt holding it and
its lease end; nothing else is; and in the stores judged by observation a renewal always
changes what is listed, even when the holder's clock stands still or steps back (a renewal
that wrote the same value would look like a dead holder).
"""

from __future__ import annotations

import pytest

from omniq_mp.models import Settlement, Task, TaskStatus, create_task
from omniq_mp.storage.base import Lease, Storage
from omniq_mp.storage.capabilities import judges_lease_expiry

NOW = 1_700_000_000.0


def make() -> Task:
    return create_task("math.sqrt", eta=NOW - 1)


async def claim(store: Storage, limit: int = 10) -> list[Task]:
    return await store.claim(["default"], limit, NOW, NOW + 30, "w1")


def observed(store: Storage) -> bool:
    """True for stores whose supervisors judge leases by observation."""
    return not judges_lease_expiry(store)


async def test_lists_every_running_task_with_its_token_and_lease_end(store: Storage) -> None:
    running, pending = make(), create_task("math.sqrt", eta=NOW + 3600)
    await store.enqueue([running, pending])
    [claimed] = await claim(store)
    assert await store.running_leases() == [Lease(claimed.id, claimed.lease_token or "", NOW + 30)]


async def test_a_settled_task_is_no_longer_listed(store: Storage) -> None:
    await store.enqueue([make(), make()])
    a, b = await claim(store)
    done = Settlement(a.id, a.lease_token or "", TaskStatus.COMPLETED, result=b"r", finished_at=NOW)
    assert await store.settle([done]) == [True]
    assert [lease.task_id for lease in await store.running_leases()] == [b.id]


async def test_an_empty_store_has_no_leases(store: Storage) -> None:
    assert await store.running_leases() == []


async def test_a_renewal_shows_as_a_change(store: Storage) -> None:
    await store.enqueue([make()])
    [task] = await claim(store)
    [before] = await store.running_leases()
    assert await store.extend_leases({task.id: task.lease_token or ""}, NOW + 60) == set()
    [after] = await store.running_leases()
    assert after.token == before.token and after.until == NOW + 60


@pytest.mark.parametrize("clock_step", [0.0, -3600.0], ids=["clock-stands-still", "clock-back"])
async def test_a_renewal_changes_the_lease_whatever_the_holders_clock(
    store: Storage, clock_step: float
) -> None:
    if not observed(store):
        pytest.skip("leases judged by the store's own clock: no observer relies on a change")
    await store.enqueue([make()])
    [task] = await claim(store)
    seen = [await store.running_leases()]
    for _ in range(3):  # renewals writing the same (or an earlier) lease end
        await store.extend_leases({task.id: task.lease_token or ""}, NOW + 30 + clock_step)
        seen.append(await store.running_leases())
    ends = [leases[0].until for leases in seen]
    assert all(e is not None for e in ends)
    assert ends == sorted(ends) and len(set(ends)) == len(ends), ends  # strictly increasing
    assert {leases[0].token for leases in seen} == {task.lease_token}


async def test_a_lost_lease_is_not_renewed(store: Storage) -> None:
    await store.enqueue([make()])
    [task] = await claim(store)
    [before] = await store.running_leases()
    assert await store.extend_leases({task.id: "stolen"}, NOW + 99) == {task.id}
    assert await store.running_leases() == [before]
