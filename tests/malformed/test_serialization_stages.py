"""Objects that break pickling, at each stage a call and its outcome cross a process
boundary, through the whole stack (store, supervisor, real worker processes):

1. enqueue (the producer pickles the call): SerializationError naming the culprit, nothing
   stored;
2. the worker unpickles the call: the task fails once, not retried (or, when unpickling
   kills the worker, it spends its crash budget and is DEAD), later tasks still run;
3. the worker pickles the return value: FAILED naming the type, the worker is reused;
4. the client unpickles the result: ``get_result`` raises SerializationError, never hangs;
5. the task raises an exception that cannot be pickled, unpickled or even printed: FAILED
   with the original type name and traceback text.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from omniq_mp import (
    LargePayloadWarning,
    OmniQ,
    SerializationError,
    Settings,
    TaskFailedError,
    TaskStatus,
)
from omniq_mp.models import Task
from tests.malformed import objects
from tests.waiting import wait_for

pytestmark = pytest.mark.process

RESULT_WAIT = 30.0  # seconds; every task here finishes in well under one

Call = tuple[Any, tuple[Any, ...], dict[str, Any]]


def worker_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """One worker process (so FIFO order is run order), quick retries, two crash starts."""
    options: dict[str, Any] = {
        "base_dir": tmp_path / "store",
        "procs": 1,
        "retry_delay": 0.05,
        "max_crashes": 2,
    }
    options.update(overrides)
    return Settings(**options)


def failure_of(q: OmniQ, task_id: str) -> tuple[TaskFailedError, Task]:
    """The error ``get_result`` raises for a failed task, and the stored task."""
    began = time.monotonic()
    with pytest.raises(TaskFailedError) as info:
        q.get_result(task_id, timeout=RESULT_WAIT)
    assert time.monotonic() - began < RESULT_WAIT
    task = q.get_task(task_id)
    assert task is not None
    return info.value, task


def finished(q: OmniQ, task_id: str) -> bool:
    task = q.get_task(task_id)
    return task is not None and task.status.is_terminal


class Probed:
    """A task stored between two ``whoami`` probes (FIFO: run in that order by the one
    worker process), so a test can tell whether the worker survived it."""

    def __init__(self, settings: Settings, target: Any, *args: Any, **options: Any) -> None:
        q = OmniQ(settings)  # a producer only: no worker runs until the test starts one
        try:
            self.before = q.enqueue(objects.whoami)
            self.task_id = q.enqueue(target, *args, **options)
            self.after = q.enqueue(objects.whoami)
        finally:
            q.close()

    def pids(self, q: OmniQ) -> tuple[int, int]:
        """The worker pids the probes ran in."""
        return (
            q.get_result(self.before, timeout=RESULT_WAIT),
            q.get_result(self.after, timeout=RESULT_WAIT),
        )


# -- stage 1: the producer pickles the call ------------------------------------------------------


def closure_over_lock(stack: contextlib.ExitStack) -> Call:
    lock = threading.Lock()
    return (lambda: lock.locked()), (), {}


def open_socket_argument(stack: contextlib.ExitStack) -> Call:
    sock = stack.enter_context(socket.socket())
    return objects.ignore, (sock,), {}


def generator_argument(stack: contextlib.ExitStack) -> Call:
    return objects.ignore, ((n for n in range(3)),), {}


def local_class_holding_a_file(stack: contextlib.ExitStack) -> Call:
    class Holder:
        def __init__(self, handle: Any) -> None:
            self.handle = handle

    handle = stack.enter_context(open(__file__, "rb"))
    return objects.ignore, (Holder(handle),), {}


def keyword_argument_lock(stack: contextlib.ExitStack) -> Call:
    return objects.ignore, (), {"guard": threading.Lock()}


def reduce_that_raises(stack: contextlib.ExitStack) -> Call:
    return objects.ignore, (objects.ReduceRaises(),), {}


def not_a_callable(stack: contextlib.ExitStack) -> Call:
    return 42, (), {}


ENQUEUE_CASES: list[tuple[Callable[[contextlib.ExitStack], Call], tuple[str, ...]]] = [
    (closure_over_lock, ("the callable", "lock")),
    (open_socket_argument, ("argument 0", "socket")),
    (generator_argument, ("argument 0", "generator")),
    (local_class_holding_a_file, ("argument 0", "Holder", "BufferedReader")),
    (keyword_argument_lock, ("keyword argument 'guard'", "lock")),
    (reduce_that_raises, ("argument 0", "ReduceRaises", "refuses to be pickled")),
    (not_a_callable, ("int",)),
]


@pytest.mark.parametrize("backend", ["sqlite", "file"])
@pytest.mark.parametrize(
    ("make_call", "named"), ENQUEUE_CASES, ids=[make.__name__ for make, _ in ENQUEUE_CASES]
)
def test_unpicklable_call_is_refused_at_enqueue_and_nothing_is_stored(
    tmp_path: Path,
    backend: str,
    make_call: Callable[[contextlib.ExitStack], Call],
    named: tuple[str, ...],
) -> None:
    q = OmniQ(Settings(backend=backend, base_dir=tmp_path / "store"))
    try:
        with contextlib.ExitStack() as stack:
            target, args, kwargs = make_call(stack)
            with pytest.raises(SerializationError) as info:
                q.enqueue(target, args=list(args), kwargs=kwargs)
        for part in named:
            assert part in str(info.value)
        assert q.stats().total == 0
    finally:
        q.close()
    if backend == "file":  # not even a temp file of a half-written entry
        leftovers = [p for p in (tmp_path / "store").rglob("*") if p.is_file()]
        assert all(p.parent.name not in ("pending", "default") for p in leftovers), leftovers


# -- stage 2: the worker unpickles the call ---------------------------------------------------

PRODUCER_ONLY_SOURCE = """
def add_one(x):
    return x + 1


class Carried:
    def __init__(self):
        self.value = 1
"""


@pytest.mark.parametrize("part", ["callable", "argument"])
def test_a_call_from_a_module_only_the_producer_has_fails_once_as_import(
    tmp_path: Path, part: str
) -> None:
    settings = worker_settings(tmp_path)
    name = f"producer_only_{uuid.uuid4().hex[:12]}"
    folder = tmp_path / "producer_only"
    module = objects.make_module(folder, name, PRODUCER_ONLY_SOURCE)
    try:
        if part == "callable":
            call: tuple[Any, ...] = (module.add_one, 1)
        else:
            call = (objects.ignore, module.Carried())
        probed = Probed(settings, *call, max_retries=3)
    finally:
        objects.forget_module(folder, name)  # gone before any worker starts
    with OmniQ(settings) as q:
        error, task = failure_of(q, probed.task_id)
        before, after = probed.pids(q)
    assert error.error_type in ("ModuleNotFoundError", "ImportError")
    assert name in error.message
    assert task.error is not None and task.error.kind == "import"
    assert task.status is TaskStatus.FAILED and task.attempts == 1  # max_retries=3 unused
    assert before == after  # the worker lived on and ran the next task


def test_setstate_that_raises_fails_once_as_serialization(tmp_path: Path) -> None:
    settings = worker_settings(tmp_path)
    probed = Probed(settings, objects.ignore, objects.SetstateRaises(), max_retries=3)
    with OmniQ(settings) as q:
        error, task = failure_of(q, probed.task_id)
        before, after = probed.pids(q)
    assert error.error_type == "SerializationError"
    assert "the task payload" in error.message and "setstate refused the payload" in error.message
    assert "__setstate__" in error.traceback
    assert task.error is not None and task.error.kind == "serialization"
    assert task.status is TaskStatus.FAILED and task.attempts == 1
    assert before == after


def test_unpickling_that_kills_the_worker_spends_the_crash_budget_then_is_dead(
    tmp_path: Path,
) -> None:
    settings = worker_settings(tmp_path, max_crashes=2)
    probed = Probed(settings, objects.ignore, objects.ExitsOnUnpickle(), max_retries=5)
    with OmniQ(settings) as q:
        error, task = failure_of(q, probed.task_id)
        before, after = probed.pids(q)
    assert error.error_type == "WorkerCrashed"
    assert task.status is TaskStatus.DEAD
    assert task.attempts == 2 and task.crashes == 2  # max_crashes, not max_retries
    assert [e.kind for e in task.history] == ["crash", "crash"]
    assert "7" in task.history[0].message  # the exit code is in the reason
    assert before != after  # the dead worker was replaced, and the replacement runs tasks


# -- stage 3: the worker pickles the return value ---------------------------------------------

RESULT_CASES: list[tuple[Callable[[], Any], str]] = [
    (objects.return_generator, "builtins.generator"),
    (objects.return_lock, "_thread.lock"),
    (objects.return_socket, "socket.socket"),
    (objects.return_closure_over_lock, "builtins.function"),
    (objects.return_deep_nesting, "builtins.list"),
]


@pytest.mark.parametrize(
    ("body", "type_name"), RESULT_CASES, ids=[body.__name__ for body, _ in RESULT_CASES]
)
def test_unpicklable_return_value_fails_naming_its_type_and_the_worker_lives_on(
    tmp_path: Path, body: Callable[[], Any], type_name: str
) -> None:
    settings = worker_settings(tmp_path)
    probed = Probed(settings, body, max_retries=3)
    with OmniQ(settings) as q:
        error, task = failure_of(q, probed.task_id)
        before, after = probed.pids(q)
    assert error.error_type == "SerializationError"
    assert f"the result (a {type_name})" in error.message
    assert task.error is not None and task.error.kind == "serialization"
    assert task.status is TaskStatus.FAILED and task.attempts == 1  # retrying cannot help
    assert before == after


# -- stage 4: the client unpickles the result -------------------------------------------------


def needs_two_args_error(tmp_path: Path) -> tuple[Any, ...]:
    return (objects.return_needs_two_args_error,)


def init_needs_args(tmp_path: Path) -> tuple[Any, ...]:
    return (objects.return_init_needs_args,)


def class_only_in_the_worker(tmp_path: Path) -> tuple[Any, ...]:
    name = f"worker_only_{uuid.uuid4().hex[:12]}"
    return (objects.return_instance_of_worker_only_class, str(tmp_path / "worker_only"), name)


@pytest.mark.parametrize(
    "make_call", [needs_two_args_error, init_needs_args, class_only_in_the_worker]
)
def test_result_that_cannot_unpickle_in_the_client_raises_serialization_error(
    tmp_path: Path, make_call: Callable[[Path], tuple[Any, ...]]
) -> None:
    with OmniQ(worker_settings(tmp_path)) as q:
        task_id = q.enqueue(*make_call(tmp_path))
        wait_for(lambda: finished(q, task_id), RESULT_WAIT, "the task to finish")
        task = q.get_task(task_id)
        assert task is not None
        assert task.status is TaskStatus.COMPLETED and task.result  # stored as opaque bytes
        began = time.monotonic()
        with pytest.raises(SerializationError, match="cannot be unpickled here"):
            q.get_result(task_id, timeout=RESULT_WAIT)
        assert time.monotonic() - began < 5.0  # an error at once, not a wait
        assert q.get_result(q.enqueue(objects.whoami), timeout=RESULT_WAIT) > 0


# -- stage 5: exceptions that cannot cross --------------------------------------------------

EXCEPTION_CASES: list[tuple[Callable[[], None], str, str]] = [
    (objects.raise_holds_a_lock, "HoldsALockError", "raised while holding a lock"),
    (objects.raise_needs_two_args, "NeedsTwoArgsError", "code 7: required-args constructor"),
    (objects.raise_reduce_raises, "ReduceRaisesError", "unpicklable by __reduce__"),
    (objects.raise_str_raises, "StrRaisesError", "str()"),
    (objects.raise_with_unpicklable_cause, "ValueError", "outer failure with an unpicklable"),
]


@pytest.mark.parametrize(
    ("body", "type_name", "message"),
    EXCEPTION_CASES,
    ids=[body.__name__ for body, _, _ in EXCEPTION_CASES],
)
def test_exception_that_cannot_be_pickled_fails_with_its_type_and_traceback(
    tmp_path: Path, body: Callable[[], None], type_name: str, message: str
) -> None:
    settings = worker_settings(tmp_path)
    probed = Probed(settings, body, max_retries=1)
    with OmniQ(settings) as q:
        error, task = failure_of(q, probed.task_id)
        before, after = probed.pids(q)
    assert error.error_type == type_name
    assert message in error.message
    assert body.__name__ in error.traceback  # the worker's traceback, as text
    assert type_name in error.traceback
    # An ordinary exception: retried by its budget (max_retries=1 gives two runs).
    assert task.status is TaskStatus.FAILED and task.attempts == 2
    assert [e.error_type for e in task.history] == [type_name, type_name]
    assert before == after
    if body is objects.raise_with_unpicklable_cause:
        assert "HoldsALockError: raised while holding a lock" in error.traceback
        assert "direct cause" in error.traceback


# -- a big argument -------------------------------------------------------------------------


@pytest.mark.slow
def test_a_50_mib_argument_round_trips_byte_identical(tmp_path: Path) -> None:
    data = os.urandom(50 * 2**20)
    digest = hashlib.sha256(data).hexdigest()
    with OmniQ(worker_settings(tmp_path)) as q:
        with pytest.warns(LargePayloadWarning):
            task_id = q.enqueue(objects.digest_and_echo, data)
        del data
        seen_by_worker, echoed = q.get_result(task_id, timeout=120)
    assert seen_by_worker == digest
    assert hashlib.sha256(echoed).hexdigest() == digest


def test_a_result_over_max_result_size_fails_unsent_and_is_not_retried(tmp_path: Path) -> None:
    """Row 30: the worker measures the pickled result and never sends one over the
    limit; the task fails as ResultTooLarge, once, and the worker takes the next task."""
    with OmniQ(worker_settings(tmp_path, max_result_size="1MiB")) as q:
        big = q.enqueue(os.urandom, 2 * 10**6, max_retries=3)
        with pytest.raises(TaskFailedError) as failed:
            q.get_result(big, timeout=30)
        assert failed.value.error_type == "ResultTooLarge"
        assert "over max_result_size (1.0 MiB)" in str(failed.value)
        task = q.get_task(big)
        assert task is not None and task.status is TaskStatus.FAILED and task.attempts == 1
        assert len(q.get_result(q.enqueue(os.urandom, 10**5), timeout=30)) == 10**5


def test_a_call_over_max_payload_size_is_refused_at_enqueue_and_nothing_is_stored(
    tmp_path: Path,
) -> None:
    q = OmniQ(Settings(base_dir=tmp_path, max_payload_size="1MiB"))
    try:
        with pytest.raises(SerializationError, match=r"over max_payload_size \(1.0 MiB\)"):
            q.enqueue(len, b"x" * 2 * 10**6)
        assert q.stats().pending == 0
        q.enqueue(len, b"x" * 1000)  # under the limit: stored
        assert q.stats().pending == 1
    finally:
        q.close()


@pytest.mark.slow
def test_a_100_mib_result_round_trips_byte_identical(tmp_path: Path) -> None:
    """Row 30: a result under the default 256 MB limit is stored and returned whole."""
    with OmniQ(worker_settings(tmp_path)) as q:
        task_id = q.enqueue(objects.random_block, 100 * 2**20)
        digest, block = q.get_result(task_id, timeout=120)
    assert hashlib.sha256(block).hexdigest() == digest


@pytest.fixture(autouse=True)
def _no_stray_module_paths() -> Iterator[None]:
    """Temp modules must never leak onto this process's import path."""
    before = list(sys.path)
    yield
    assert sys.path == before
