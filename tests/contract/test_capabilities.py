"""Optional store capabilities: each built-in store has the ones the runtime's faster
paths rely on (losing one, by a renamed method say, would silently slow those paths
down), and the runtime takes them from any store that has them, its own or not."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from omniq_mp.models import Settlement, Task, TaskStatus
from omniq_mp.queue import AsyncTaskQueue
from omniq_mp.storage.base import Storage
from omniq_mp.storage.capabilities import (
    AnnouncesWork,
    CarriesClaims,
    EnqueuesFromThreads,
    ReadsFromThreads,
    ReadsOutcomes,
    judges_lease_expiry,
)
from omniq_mp.storage.file import FileStorage
from omniq_mp.storage.memory import MemoryStorage
from omniq_mp.storage.postgres import PostgresStorage
from omniq_mp.storage.sqlite import SQLiteStorage
from tests.contract.test_storage_contract import make

CAPABILITIES = (CarriesClaims, ReadsOutcomes, EnqueuesFromThreads, ReadsFromThreads, AnnouncesWork)


def stores(folder: Path) -> dict[str, Storage]:
    """One unopened store of each kind (a PostgreSQL store connects only when opened)."""
    return {
        "sqlite": SQLiteStorage(folder / "omniq.db"),
        "postgres": PostgresStorage("postgresql://127.0.0.1:5432/test"),
        "file": FileStorage(folder / "store"),
        "memory": MemoryStorage(),
    }


# The table in omniq_mp/storage/capabilities.py's docstring, which this keeps true.
EXPECTED = {
    "sqlite": {CarriesClaims, ReadsOutcomes, EnqueuesFromThreads, ReadsFromThreads},
    "postgres": {CarriesClaims, ReadsOutcomes, AnnouncesWork},
    "file": {ReadsOutcomes},
    "memory": set(),
}


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_each_store_has_the_capabilities_its_documentation_lists(kind: str, tmp_path: Path) -> None:
    store = stores(tmp_path)[kind]
    assert {c for c in CAPABILITIES if isinstance(store, c)} == EXPECTED[kind]
    assert judges_lease_expiry(store) is (kind == "postgres")


def test_only_stores_that_carry_claims_are_asked_to(tmp_path: Path) -> None:
    queues = {kind: AsyncTaskQueue(store) for kind, store in stores(tmp_path).items()}
    carrying = {kind for kind, queue in queues.items() if queue.carries_claims}
    assert carrying == {"sqlite", "postgres"}


async def test_a_queue_on_a_store_that_cannot_carry_claims_says_so_rather_than_guess() -> None:
    queue = AsyncTaskQueue(MemoryStorage())
    with pytest.raises(TypeError, match="MemoryStorage cannot claim while it settles"):
        await queue.settle_and_claim([], ["default"], 1, "w", 30.0)


class CarryingMemoryStorage(MemoryStorage):
    """A store of someone else's: the memory store, given settle_and_claim."""

    def __init__(self) -> None:
        super().__init__()
        self.carried = 0

    async def settle_and_claim(
        self,
        settlements: Sequence[Settlement],
        queues: Sequence[str],
        limit: int,
        now: float,
        lease_until: float,
        worker_id: str,
        max_bytes: int | None = None,
        min_tasks: int = 1,
    ) -> tuple[list[bool], list[Task]]:
        self.carried += 1  # not atomic, unlike a real one: this only shows it is used
        applied = await self.settle(settlements)
        claimed = await self.claim(queues, limit, now, lease_until, worker_id, max_bytes, min_tasks)
        return applied, claimed


async def test_a_store_of_ones_own_gets_claims_carried_by_adding_the_method() -> None:
    store = CarryingMemoryStorage()
    queue = AsyncTaskQueue(store)
    assert queue.carries_claims
    first, second = make(), make()
    await store.enqueue([first, second])
    [claimed] = await queue.claim(["default"], 1, "w", 30.0)
    done = Settlement(claimed.id, claimed.lease_token or "", TaskStatus.COMPLETED, result=b"r")
    applied, more = await queue.settle_and_claim([done], ["default"], 1, "w", 30.0)
    assert (applied, [t.id for t in more], store.carried) == ([True], [second.id], 1)
