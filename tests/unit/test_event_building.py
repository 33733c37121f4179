"""The supervisor's fast paths for events give what the slow ones gave: task_event makes
exactly the constructor's Event and covers every field (an Event field added later
without it fails here, not as a missing attribute in a running supervisor), and to_json
writes to_dict's JSON, by the stdlib's rules where orjson refuses a value."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from omniq_mp import fastjson
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


def test_the_stored_json_is_to_dicts_json() -> None:
    event = task_event(**FIELDS)  # type: ignore[arg-type]
    assert event.to_json() == fastjson.dumps(event.to_dict())
    assert Event.from_dict(json.loads(event.to_json())) == event


def test_details_orjson_refuses_follow_the_stdlib_rules() -> None:
    # Integer keys and integers past 64 bits: orjson refuses both, the stdlib writes them.
    details: dict[Any, Any] = {1: "one", "big": 2**70}
    event = Event(EventType.WORKER_HEARTBEAT, details=details)
    assert json.loads(event.to_json())["details"] == {"1": "one", "big": 2**70}
