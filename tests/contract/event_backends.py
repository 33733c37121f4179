"""The event-storage backends every event contract test runs against."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from omniq_mp.eventstore.base import EventStorage
from omniq_mp.eventstore.file import FileEventStorage
from omniq_mp.eventstore.memory import MemoryEventStorage
from omniq_mp.eventstore.sqlite import SQLiteEventStorage

# Small file segments, so the shared contract also reads and purges across segments.
EVENT_BACKENDS: dict[str, Callable[[Path], EventStorage]] = {
    "memory": lambda _: MemoryEventStorage(),
    "sqlite": lambda d: SQLiteEventStorage(d / "events.db"),
    "file": lambda d: FileEventStorage(d / "events", segment_events=50),
}
SHARED = ["sqlite", "file"]  # the backends several processes can share
