"""Events in a list: for tests and for one-process use."""

from __future__ import annotations

from collections.abc import Sequence

from omniq_mp.eventstore.base import Event, EventType, StoredEvent

__all__ = ["MemoryEventStorage"]


class MemoryEventStorage:
    """An in-process event log (lost when the process ends)."""

    def __init__(self) -> None:
        self._events: list[StoredEvent] = []
        self._next = 1

    async def open(self) -> None:
        """Nothing to open."""

    async def close(self) -> None:
        """Nothing to close."""

    async def append(self, events: Sequence[Event]) -> None:
        """Number and keep the events."""
        for event in events:
            self._events.append(StoredEvent(self._next, event))
            self._next += 1

    async def read(
        self,
        after: int = 0,
        limit: int = 1000,
        task_id: str | None = None,
        types: Sequence[EventType] | None = None,
    ) -> list[StoredEvent]:
        """Events after a position, filtered."""
        found = [
            s
            for s in self._events
            if s.position > after
            and (task_id is None or s.event.task_id == task_id)
            and (types is None or s.event.event_type in types)
        ]
        return found[:limit]

    async def purge(self, before: float) -> int:
        """Drop old events."""
        kept = [s for s in self._events if s.event.timestamp >= before]
        removed = len(self._events) - len(kept)
        self._events = kept
        return removed
