"""How calls are pickled: each form must run in a fresh interpreter that has only the
worker's imports, whatever shortcut the producer took."""

from __future__ import annotations

import importlib
import os.path
import subprocess
import sys
import textwrap
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cloudpickle

from omniq_mp import OmniQ
from omniq_mp.serialization import dumps_call, loads_call


def run_elsewhere(payload: bytes, tmp_path: Path) -> str:
    """Unpickle and call ``payload`` in a new interpreter (its own ``__main__``, no test
    modules on its path); what the call returned, as repr."""
    path = tmp_path / "payload.bin"
    path.write_bytes(payload)
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from omniq_mp.serialization import loads_call
        func, args, kwargs = loads_call(Path({str(path)!r}).read_bytes())
        print(repr(func(*args, **kwargs)))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_an_importable_function_runs_and_is_not_carried_by_value(tmp_path: Path) -> None:
    payload = dumps_call(os.path.join, ("a", "b"), {})
    assert b"co_code" not in payload and len(payload) < 200
    assert run_elsewhere(payload, tmp_path) == repr(os.path.join("a", "b"))
    func, args, _ = loads_call(payload)
    assert func is os.path.join and args == ("a", "b")


def test_an_argument_of_a_main_subclass_of_a_builtin_type_still_runs(tmp_path: Path) -> None:
    # Plain arguments take the C pickler; a subclass of int defined in __main__ must not:
    # that pickler would record it by a name the worker's __main__ does not have.
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from omniq_mp.serialization import dumps_call

        class Tag(int):
            pass

        def show(value, labels):
            return type(value).__name__, int(value), type(labels["x"]).__name__

        payload = dumps_call(show, (Tag(5),), {{"labels": {{"x": Tag(1)}}}})
        Path({str(tmp_path / "made.bin")!r}).write_bytes(payload)
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60, cwd=tmp_path)
    payload = (tmp_path / "made.bin").read_bytes()
    assert run_elsewhere(payload, tmp_path) == repr(("Tag", 5, "Tag"))


@contextmanager
def helper_module(tmp_path: Path) -> Iterator[types.ModuleType]:
    """A module of one function, ``triple``, importable here but not by a worker (it lives
    in a folder only this process has on its path)."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "private_helpers.py").write_text("def triple(x):\n    return 3 * x\n")
    sys.path.insert(0, str(source))
    try:
        yield importlib.import_module("private_helpers")
    finally:
        sys.path.remove(str(source))
        sys.modules.pop("private_helpers", None)


def test_a_module_registered_by_value_is_carried_to_workers_that_lack_it(
    tmp_path: Path,
) -> None:
    with helper_module(tmp_path) as helpers:
        cloudpickle.register_pickle_by_value(helpers)
        try:
            payload = dumps_call(helpers.triple, (14,), {})
        finally:
            cloudpickle.unregister_pickle_by_value(helpers)
    assert run_elsewhere(payload, tmp_path) == "42"


def test_a_module_registered_by_value_after_an_enqueue_travels_by_value(
    tmp_path: Path,
) -> None:
    # A notebook user whose first task failed with "No module named ..." registers the
    # module by value and enqueues again: that task must carry the code, even though the
    # client keeps the builder of a function it sent by name.
    client = OmniQ(base_dir=tmp_path / "store", event_storage_type="none")
    with helper_module(tmp_path) as helpers:
        before = client.build(helpers.triple, 14)
        cloudpickle.register_pickle_by_value(helpers)
        try:
            after = client.build(helpers.triple, 14)
        finally:
            cloudpickle.unregister_pickle_by_value(helpers)
    assert b"private_helpers:triple" in before.payload
    assert run_elsewhere(after.payload, tmp_path) == "42"


def test_a_lambda_with_arguments_of_every_kind_runs(tmp_path: Path) -> None:
    offset = 10
    payload = dumps_call(
        lambda a, b, *, c: (a + offset, b, c), (1, [2.5, "x", None]), {"c": {"k": (b"y",)}}
    )
    assert run_elsewhere(payload, tmp_path) == repr((11, [2.5, "x", None], {"k": (b"y",)}))
