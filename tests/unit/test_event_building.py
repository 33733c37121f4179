"""task_event, the supervisor's fast way to make an Event, makes exactly what the
constructor makes, and covers every field (an Event field added later without it fails
here, not as a missing attribute in a running supervisor)."""

from __future__ import annotations

import dataclasses

import pytest

from omniq_mp.eventstore.base import Event, EventType, task_event

FIELDS = {
    "event_type": EventType.FAILED,
    "task_id": "t1",
    "timestamp": 1_700_000_000.5,
    "worker_id": "w1",
    "func_name": "mod.func",
    "queue": "high",
    "attempt": 2,
    "duration": 0.25,
    "details": {"error": "boom", "will_retry": True},
}


def test_it_equals_the_constructors_event() -> None:
    built = task_event(**FIELDS)  # type: ignore[arg-type]
    made = Event(**FIELDS)  # type: ignore[arg-type]
    assert built == made
    assert built.to_dict() == made.to_dict()
    assert Event.from_dict(built.to_dict()) == made


def test_it_sets_every_field_of_event() -> None:
    assert [f.name for f in dataclasses.fields(Event)] == list(FIELDS)
    assert vars(task_event(**FIELDS)) == FIELDS  # type: ignore[arg-type]


def test_the_event_stays_frozen() -> None:
    built = task_event(**FIELDS)  # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.queue = "other"  # type: ignore[misc]
