"""Event storage backends behind :class:`~omniq_mp.eventstore.base.EventStorage`."""

from __future__ import annotations

from omniq_mp.config import Settings
from omniq_mp.eventstore.base import Event, EventStorage, EventType, StoredEvent
from omniq_mp.eventstore.file import FileEventStorage
from omniq_mp.eventstore.memory import MemoryEventStorage
from omniq_mp.eventstore.nats import NATSEventStorage
from omniq_mp.eventstore.postgres import PostgreSQLEventStorage
from omniq_mp.eventstore.redis import RedisEventStorage
from omniq_mp.eventstore.sqlite import SQLiteEventStorage

__all__ = [
    "Event",
    "EventStorage",
    "EventType",
    "FileEventStorage",
    "MemoryEventStorage",
    "NATSEventStorage",
    "PostgreSQLEventStorage",
    "RedisEventStorage",
    "SQLiteEventStorage",
    "StoredEvent",
]


def open_event_storage(settings: Settings) -> EventStorage | None:
    """The event store ``settings`` name (unopened), or None when events are off."""
    from omniq_mp.stores import open_event_storage as build

    return build(settings)


def open_event_storage_at(kind: str, path: str | None) -> EventStorage:
    """An (unopened) event store of ``kind`` at ``path`` (servers: their defaults)."""
    from omniq_mp.stores import event_storage_at

    return event_storage_at(kind, path=path)
