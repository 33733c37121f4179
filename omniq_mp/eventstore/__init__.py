"""Event storage backends behind :class:`~omniq_mp.eventstore.base.EventStorage`."""

from __future__ import annotations

from omniq_mp.config import Settings
from omniq_mp.eventstore.base import Event, EventStorage, EventType, StoredEvent
from omniq_mp.eventstore.file import FileEventStorage
from omniq_mp.eventstore.memory import MemoryEventStorage
from omniq_mp.eventstore.sqlite import SQLiteEventStorage

__all__ = [
    "Event",
    "EventStorage",
    "EventType",
    "FileEventStorage",
    "MemoryEventStorage",
    "SQLiteEventStorage",
    "StoredEvent",
]


def open_event_storage(settings: Settings) -> EventStorage | None:
    """The event store ``settings`` name (unopened), or None when events are off."""
    if settings.event_storage_type == "none":
        return None
    kind = settings.event_storage_type or "sqlite"
    if kind == "memory":
        return MemoryEventStorage()
    return open_event_storage_at(kind, str(settings.events_path))


def open_event_storage_at(kind: str, path: str | None) -> EventStorage:
    """An (unopened) event store of ``kind`` at ``path``."""
    from pathlib import Path

    from omniq_mp.errors import ConfigError

    if kind == "memory":
        return MemoryEventStorage()
    if kind == "sqlite":
        return SQLiteEventStorage(Path(path or "./omniq_data/events.db"))
    if kind == "file":
        return FileEventStorage(Path(path or "./omniq_data/events"))
    raise ConfigError(f"event_storage_type must be sqlite, file, memory or none; got {kind!r}")
