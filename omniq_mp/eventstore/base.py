"""The event-storage seam: an append-only log of task and worker events.

Every stored event gets a ``position``: a strictly increasing integer in its store. A
follower remembers the last position it handled and asks for what comes after it, so a
restarted follower misses nothing and sees nothing twice.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from omniq_mp import fastjson

__all__ = ["Event", "EventStorage", "EventType", "StoredEvent"]


class EventType(enum.StrEnum):
    """What happened. Task events first, then worker events."""

    ENQUEUED = "ENQUEUED"
    SCHEDULED = "SCHEDULED"  # will not run before details["eta"] (an ETA or a retry backoff)
    STARTED = "STARTED"  # the worker process acknowledged the task
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"  # an attempt raised; details["will_retry"] says whether it runs again
    RETRIED = "RETRIED"  # a new attempt was scheduled after a failure
    TIMED_OUT = "TIMED_OUT"  # the attempt was killed at its deadline
    CANCELLED = "CANCELLED"
    DEAD = "DEAD"  # quarantined after its crash budget was spent
    ERROR_STORING_RESULT = "ERROR_STORING_RESULT"
    WORKER_ONLINE = "WORKER_ONLINE"
    WORKER_HEARTBEAT = "WORKER_HEARTBEAT"
    WORKER_OFFLINE = "WORKER_OFFLINE"

    @property
    def is_worker_event(self) -> bool:
        """True for the supervisor's own life events."""
        return self.value.startswith("WORKER_")


@dataclass(frozen=True)
class Event:
    """One event. ``task_id`` is None for worker events.

    :param details: plain data (JSON-serialisable): error, eta, will_retry, result size,
        and for worker events the supervisor's counters and children.
    """

    event_type: EventType
    task_id: str | None = None
    timestamp: float = field(default_factory=time.time)
    worker_id: str | None = None
    func_name: str | None = None
    queue: str | None = None
    attempt: int | None = None
    duration: float | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON storage and ``--json`` output."""
        # Spelled out, not a loop over the fields: a supervisor encodes two per task.
        return {
            "event_type": self.event_type.value,
            "task_id": self.task_id,
            "timestamp": self.timestamp,
            "worker_id": self.worker_id,
            "func_name": self.func_name,
            "queue": self.queue,
            "attempt": self.attempt,
            "duration": self.duration,
            "details": dict(self.details),
        }

    def to_json(self) -> str:
        """The stored form: :meth:`to_dict` as JSON text (read back by :meth:`from_dict`)."""
        try:
            # orjson writes a dataclass itself, fields in order, enums as their values:
            # the same text as to_dict's, in a quarter of the time (two events per task).
            return fastjson.dumps(self)
        except TypeError:  # details orjson refuses: to_dict's, by the stdlib's rules
            return fastjson.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Event:
        """Inverse of :meth:`to_dict`; unknown keys are ignored, an unknown type raises."""
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known["event_type"] = EventType(known["event_type"])
        known["details"] = dict(known.get("details") or {})
        return cls(**known)


def task_event(
    event_type: EventType,
    task_id: str,
    timestamp: float,
    worker_id: str | None,
    func_name: str,
    queue: str,
    attempt: int | None,
    duration: float | None,
    details: Mapping[str, Any],
) -> Event:
    """The same ``Event`` as the constructor makes from these fields, every one given.

    The supervisor makes two events per task; a frozen dataclass's ``__init__`` sets each
    of its nine fields through ``object.__setattr__``, and filling the instance's
    ``__dict__`` directly takes a third of the time (1.6 against 0.5 µs).
    """
    event = object.__new__(Event)
    event.__dict__.update(
        event_type=event_type,
        task_id=task_id,
        timestamp=timestamp,
        worker_id=worker_id,
        func_name=func_name,
        queue=queue,
        attempt=attempt,
        duration=duration,
        details=details,
    )
    return event


@dataclass(frozen=True)
class StoredEvent:
    """An event and its position in the store."""

    position: int
    event: Event


@runtime_checkable
class EventStorage(Protocol):
    """An append-only event log."""

    async def open(self) -> None:
        """Create or open the log."""

    async def close(self) -> None:
        """Release resources (idempotent)."""

    async def append(self, events: Sequence[Event]) -> None:
        """Store events in order, in one write."""

    async def read(
        self,
        after: int = 0,
        limit: int = 1000,
        task_id: str | None = None,
        types: Sequence[EventType] | None = None,
    ) -> list[StoredEvent]:
        """Events with position > ``after`` (oldest first), optionally of one task or of
        some types."""
        ...

    async def purge(self, before: float) -> int:
        """Delete events older than ``before`` (epoch seconds); return how many."""
        ...
