"""EventRecorder's writer: a trickle of events shares writes, and a backlog is written
back to back instead of one batch per linger period (a drain emits two events per task,
faster than that pace, and a backlog past the recorder's capacity drops events)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from omniq_mp import events
from omniq_mp.events import Event, EventRecorder, EventType
from omniq_mp.eventstore.base import task_event
from omniq_mp.eventstore.memory import MemoryEventStorage


class CountingStorage(MemoryEventStorage):
    """Remembers the size of every append."""

    def __init__(self) -> None:
        super().__init__()
        self.appends: list[int] = []

    async def append(self, batch: Sequence[Event]) -> None:
        self.appends.append(len(batch))
        await super().append(batch)


def started(i: int) -> Event:
    return task_event(EventType.STARTED, f"t{i}", float(i), None, "f", "default", 1, None, {})


async def stored_ids(storage: MemoryEventStorage) -> list[str | None]:
    return [s.event.task_id for s in await storage.read(after=0, limit=100_000)]


def recorder_lingering(
    seconds: float, monkeypatch: pytest.MonkeyPatch
) -> tuple[EventRecorder, CountingStorage]:
    """A recorder over a counting store whose writer lingers ``seconds`` for company."""
    monkeypatch.setattr(events, "_LINGER", seconds)
    storage = CountingStorage()
    return EventRecorder(storage), storage


async def test_a_backlog_is_written_without_a_linger_per_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # With a 2 s linger, lingering before each of the 10 batches would take 20 s.
    recorder, storage = recorder_lingering(2.0, monkeypatch)
    recorder.emit_many([started(i) for i in range(5_000)])
    recorder.start()
    await asyncio.wait_for(recorder.stop(), 10)
    assert await stored_ids(storage) == [f"t{i}" for i in range(5_000)]
    assert storage.appends == [500] * 10


async def test_a_trickle_of_events_still_shares_one_write(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    recorder, storage = recorder_lingering(0.5, monkeypatch)
    recorder.start()
    recorder.emit(started(0))
    for _ in range(3):  # the writer takes the first event and lingers
        await asyncio.sleep(0)
    recorder.emit(started(1))
    recorder.emit(started(2))
    await asyncio.wait_for(recorder.stop(), 10)
    assert await stored_ids(storage) == ["t0", "t1", "t2"]
    assert storage.appends == [3]
