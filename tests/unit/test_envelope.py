"""The payload header: what a worker learns before unpickling anything."""

from __future__ import annotations

import os.path
import platform
import warnings

import cloudpickle
import pytest

from omniq_mp import LargePayloadWarning
from omniq_mp.envelope import Header, VersionSkewError, code_hash, local_header, seal, split
from omniq_mp.queue import build_task
from omniq_mp.serialization import loads_call


def test_header_round_trips_and_plain_pickles_still_load() -> None:
    header = Header("3.12.1", "3.1.0", "abc")
    got, body = split(seal(header, b"pickle-bytes"))
    assert got == header and bytes(body) == b"pickle-bytes"
    legacy = cloudpickle.dumps((os.path.join, ("a", "b"), {}))
    assert split(legacy)[0] is None
    func, args, _ = loads_call(legacy)
    assert func(*args) == os.path.join("a", "b")


@pytest.mark.parametrize(
    "payload",
    [b"OMQ\x01", b"OMQ\x01\x00\x10{}", b"OMQ\x01\x00\x02{}", b"OMQ\x01\x00\x03[1]rest"],
)
def test_damaged_headers_are_refused_with_a_reason(payload: bytes) -> None:
    with pytest.raises(ValueError, match="header"):
        split(payload)


def test_code_hash_only_for_code_that_travels_by_value() -> None:
    assert code_hash(os.path.join) is None  # importable: the worker imports it
    assert code_hash("os.path.join") is None
    assert code_hash(lambda: 1) is not None
    assert code_hash(lambda: 1) != code_hash(lambda: 2)


def test_by_value_code_from_another_python_is_refused_naming_both_versions() -> None:
    task = build_task(lambda x: x, (1,))
    header, body = split(task.payload)
    assert header is not None and header.code is not None
    foreign = seal(Header("3.99.0", header.cloudpickle, header.code), bytes(body))
    with pytest.raises(VersionSkewError) as caught:
        loads_call(foreign)
    assert "Python 3.99.0" in str(caught.value)
    assert f"Python {platform.python_version()}" in str(caught.value)


def test_by_reference_calls_from_another_python_still_run() -> None:
    task = build_task(os.path.join, ("a", "b"))
    header, body = split(task.payload)
    assert header is not None and header.code is None
    foreign = seal(Header("3.99.0", "9.9.9"), bytes(body))
    func, args, _ = loads_call(foreign)
    assert func(*args) == os.path.join("a", "b")


def test_an_unpicklable_payload_from_another_version_names_both() -> None:
    here = local_header()
    foreign = seal(Header(here.python, "0.1.0"), b"\x80\x05garbage")
    with pytest.raises(VersionSkewError, match=r"cloudpickle 0\.1\.0.*cloudpickle"):
        loads_call(foreign)


def test_a_closure_that_captures_a_large_object_warns_with_its_size() -> None:
    blob = b"x" * (3 << 20)
    with pytest.warns(LargePayloadWarning, match=r"captured variable 'blob' \(bytes\) 3\.0 MiB"):
        build_task(lambda: len(blob))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_task(len, (b"small",))
    assert not caught


def test_the_large_payload_warning_points_at_the_callers_line() -> None:
    with pytest.warns(LargePayloadWarning) as record:
        build_task(len, (b"y" * (2 << 20),))
    assert record[0].filename == __file__
