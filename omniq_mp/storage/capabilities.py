"""What a store may do beyond the :class:`~omniq_mp.storage.base.Storage` protocol.

Each capability is a faster or cheaper way to do something the base protocol already
does, so a store without it works the same, only slower: the runtime asks
``isinstance(store, Capability)`` and otherwise takes the base protocol's path. A new
backend gets each speed-up by adding the methods named here, nothing else.

Which store has which (``tests/contract/test_capabilities.py`` holds them to it):

============================  ======  ==========  ====  ======
capability                    SQLite  PostgreSQL  file  memory
============================  ======  ==========  ====  ======
:class:`CarriesClaims`        yes     yes
:class:`ReadsOutcomes`        yes     yes         yes
:class:`EnqueuesFromThreads`  yes
:class:`ReadsFromThreads`     yes
:class:`AnnouncesWork`                yes
============================  ======  ==========  ====  ======

One more is a class attribute, not a method: ``judges_lease_expiry = True`` says that
the store's ``expired`` can be trusted to name dead leases (one clock for every host,
PostgreSQL's ``now()``), so supervisors need not judge them by watching renewals.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from omniq_mp.models import Settlement, Task

__all__ = [
    "AnnouncesWork",
    "CarriesClaims",
    "EnqueuesFromThreads",
    "ReadsFromThreads",
    "ReadsOutcomes",
    "judges_lease_expiry",
]


@runtime_checkable
class CarriesClaims(Protocol):
    """Stores outcomes and claims more work in one transaction.

    A supervisor draining short tasks settles and claims all the time; one commit for
    both halves what it pays the store (on SQLite, one fsync instead of a synced commit
    and an unsynced one).
    """

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
        """``settle(settlements)``, then ``claim(queues, limit, ...)``, atomically: what
        each would return. If either part fails, neither is stored."""
        ...


@runtime_checkable
class ReadsOutcomes(Protocol):
    """Reads tasks without their payloads, for clients waiting on results.

    Waiters read their tasks again at every look, and a payload may be megabytes that
    nobody waiting for an outcome needs.
    """

    async def get_outcomes(self, task_ids: Sequence[str]) -> list[Task]:
        """``get_many(task_ids)`` with every payload left out (``b""`` stands in)."""
        ...


@runtime_checkable
class EnqueuesFromThreads(Protocol):
    """Stores tasks from the calling thread, whatever thread that is.

    The synchronous client then commits without a trip through its event loop and the
    store's own thread: a script's single ``enqueue`` costs one commit.
    """

    def enqueue_blocking(self, tasks: Sequence[Task]) -> list[str]:
        """``enqueue(tasks)``, with the same contract, in the calling thread."""
        ...


@runtime_checkable
class ReadsFromThreads(Protocol):
    """Reads a task's outcome from the calling thread, whatever thread that is.

    The synchronous client's ``get_result`` then looks without two trips through its
    event loop and the store's thread.
    """

    def get_blocking(self, task_id: str) -> Task | None:
        """``get(task_id)`` without the payload (as ``get_outcomes``), in the calling
        thread; None when no task has this id."""
        ...


@runtime_checkable
class AnnouncesWork(Protocol):
    """Tells a supervisor when another client stores work (PostgreSQL's NOTIFY), so it
    claims at once instead of at its next poll."""

    async def wait_for_work(self, timeout: float) -> bool:
        """Sleep until work is announced (True) or ``timeout`` seconds pass (False).
        True too when announcements may have been missed. Never raises for trouble
        reaching the store: the next claim reports that."""
        ...

    def notified_due(self) -> float | None:
        """The earliest ETA announced since the last call, or None if none carried one:
        the supervisor claims again at that time."""
        ...


def judges_lease_expiry(storage: object) -> bool:
    """Whether ``storage`` says itself which leases are dead (see the module's note)."""
    return bool(getattr(storage, "judges_lease_expiry", False))
