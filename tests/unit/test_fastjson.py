"""JSON on the per-task paths: what it writes reads back the same through the stdlib, what
orjson refuses still encodes as the stdlib would, and bad input fails as the stdlib's
does (frames, event bodies and lease tokens rely on each)."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from omniq_mp import fastjson
from omniq_mp.eventstore.base import Event, EventType

PLAIN = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(PLAIN)
def test_what_it_writes_the_stdlib_reads_back_unchanged(value: object) -> None:
    assert json.loads(fastjson.dumps(value)) == value
    assert fastjson.loads(fastjson.dumpb(value)) == value


def test_values_orjson_refuses_are_encoded_by_the_stdlib() -> None:
    big = 2**70  # past 64 bits
    assert fastjson.loads(fastjson.dumps({"n": big})) == {"n": big}
    assert json.loads(fastjson.dumps({1: "a"})) == {"1": "a"}  # a non-string key
    with pytest.raises(TypeError):
        fastjson.dumps({"x": object()})


@pytest.mark.parametrize("text", [b"{", b"NaN", b'{"a": Infinity}', b"\xff", b""])
def test_malformed_input_raises_the_stdlib_error(text: bytes) -> None:
    with pytest.raises(json.JSONDecodeError):
        fastjson.loads(text)


def test_an_event_body_reads_back_as_the_same_event() -> None:
    event = Event(
        EventType.FAILED,
        "0190abcdef0123456789abcdef012345",
        timestamp=1796476310.9808924,
        worker_id="host-1-ab",
        func_name="app.tasks:resize",
        queue="images",
        attempt=2,
        duration=0.25,
        details={"error": "ValueError: bad size", "will_retry": True, "eta": math.pi},
    )
    body = event.to_json()
    assert Event.from_dict(json.loads(body)) == event
    # Every field is stored: a field added to Event but not to to_dict would be lost.
    assert set(json.loads(body)) == set(Event.__dataclass_fields__)
