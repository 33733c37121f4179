"""A client keeps the builder of an option-less call to an importable function, so an
``enqueue`` loop pays only for its arguments; nothing a task carries may go stale by it
(a module registered by value later: ``test_call_pickling.py``)."""

from __future__ import annotations

import os.path
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from omniq_mp import OmniQ
from omniq_mp.serialization import loads_call
from omniq_mp.task_builder import ReferenceBuilders, TaskBuilder, TaskOptions

LABEL = "first"


def counting_maker() -> tuple[Callable[[Any], TaskBuilder], list[Any]]:
    made: list[Any] = []

    def make(target: Any) -> TaskBuilder:
        made.append(target)
        return TaskBuilder(target, TaskOptions())

    return make, made


@pytest.fixture
def client(tmp_path: Path) -> OmniQ:
    return OmniQ(base_dir=tmp_path, event_storage_type="none")


def test_an_importable_function_and_a_path_are_built_for_once() -> None:
    make, made = counting_maker()
    builders = ReferenceBuilders(make)
    assert builders.get(os.path.join) is builders.get(os.path.join)
    assert builders.get("os.path:join") is builders.get("os.path:join")
    assert made == [os.path.join, "os.path:join"]


def test_a_lambda_is_built_anew_each_time() -> None:
    make, made = counting_maker()
    builders = ReferenceBuilders(make)

    def show() -> str:
        return LABEL

    builders.get(show)
    builders.get(show)
    assert made == [show, show]


def test_a_callable_object_that_cannot_be_hashed_is_still_built() -> None:
    class Unhashable:
        __hash__ = None  # type: ignore[assignment]

        def __call__(self) -> int:
            return 1

    make, made = counting_maker()
    target = Unhashable()
    assert ReferenceBuilders(make).get(target).build().func_name.endswith("Unhashable")
    assert made == [target]


def test_each_task_of_a_lambda_carries_the_globals_of_its_own_enqueue(client: OmniQ) -> None:
    global LABEL
    show = lambda: LABEL  # noqa: E731
    first = client.build(show)
    LABEL = "second"
    try:
        second = client.build(show)
    finally:
        LABEL = "first"
    runs = [
        func(*args, **kwargs)
        for func, args, kwargs in map(loads_call, (first.payload, second.payload))
    ]
    assert runs == ["first", "second"]


def test_task_options_of_one_call_do_not_stick_to_the_next(client: OmniQ) -> None:
    assert client.build(os.path.join, "a", queue="urgent", priority=5).queue == "urgent"
    plain = client.build(os.path.join, "a")
    assert (plain.queue, plain.priority) == ("default", 0)
    func, args, _ = loads_call(plain.payload)
    assert func is os.path.join and args == ("a",)
