"""Objects and task bodies that misbehave while being pickled or unpickled.

They live at module level in an importable module, so cloudpickle carries them by
reference and the worker imports this module, as it would a user's task module. The
helpers at the end make modules that exist for one side only (the producer, or the
worker), to break unpickling on the other side.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

# -- exceptions a task raises -----------------------------------------------------------------


class HoldsALockError(Exception):
    """Cannot be pickled: it carries a lock."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


class NeedsTwoArgsError(Exception):
    """Pickles, but cannot unpickle: ``args`` holds one value and ``__init__`` wants two."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"code {code}: {detail}")
        self.code = code
        self.detail = detail


class ReduceRaisesError(Exception):
    """Its ``__reduce__`` raises, so pickling it fails inside the pickler."""

    def __reduce__(self) -> Any:
        raise RuntimeError("this exception refuses to be pickled")


class StrRaisesError(Exception):
    """Its ``__str__`` raises, so even its message cannot be read."""

    def __str__(self) -> str:
        raise RuntimeError("this exception refuses str()")


def raise_holds_a_lock() -> None:
    raise HoldsALockError("raised while holding a lock")


def raise_needs_two_args() -> None:
    raise NeedsTwoArgsError(7, "required-args constructor")


def raise_reduce_raises() -> None:
    raise ReduceRaisesError("unpicklable by __reduce__")


def raise_str_raises() -> None:
    raise StrRaisesError()


def raise_with_unpicklable_cause() -> None:
    try:
        raise_holds_a_lock()
    except HoldsALockError as inner:
        raise ValueError("outer failure with an unpicklable cause") from inner


# -- arguments that pickle in the producer and fail in the worker -----------------------------


class SetstateRaises:
    """Pickles fine; restoring its state raises in whoever unpickles it."""

    def __init__(self) -> None:
        self.marker = "state that will be refused"

    def __setstate__(self, state: Any) -> None:
        raise RuntimeError("setstate refused the payload")


class ExitsOnUnpickle:
    """Unpickling it ends the unpickling process at once (``os._exit(7)``).

    Never unpickle one in the test process: only workers see task payloads.
    """

    def __reduce__(self) -> Any:
        return (os._exit, (7,))


class ReduceRaises:
    """Cannot be pickled at all: its ``__reduce__`` raises."""

    def __reduce__(self) -> Any:
        raise RuntimeError("ReduceRaises refuses to be pickled")


# -- results that cannot be pickled in the worker ----------------------------------------------


def return_generator() -> Any:
    return (n for n in range(3))


def return_lock() -> Any:
    return threading.Lock()


def return_socket() -> Any:
    return socket.socket()


def return_closure_over_lock() -> Any:
    lock = threading.Lock()
    return lambda: lock.locked()


def return_deep_nesting(depth: int = 100_000) -> Any:
    nested: list[Any] = []
    for _ in range(depth):
        nested = [nested]
    return nested


# -- results that pickle in the worker but cannot unpickle in the client ----------------------


class InitNeedsArgs:
    """Reduces to a bare ``InitNeedsArgs()`` call, which its ``__init__`` refuses."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __reduce__(self) -> Any:
        return (InitNeedsArgs, ())


def return_needs_two_args_error() -> Any:
    return NeedsTwoArgsError(3, "returned, not raised")


def return_init_needs_args() -> Any:
    return InitNeedsArgs(5)


def return_instance_of_worker_only_class(folder: str, module_name: str) -> Any:
    """Create a module in ``folder`` (in the worker), import it and return one of its
    objects: the client, without ``folder`` on its path, cannot unpickle the result."""
    module = make_module(Path(folder), module_name, "class OnlyInTheWorker:\n    pass\n")
    return module.OnlyInTheWorker()


# -- well-behaved bodies -----------------------------------------------------------------------


def whoami() -> int:
    return os.getpid()


def ignore(*args: Any, **kwargs: Any) -> None:
    return None


def random_block(size: int) -> tuple[str, bytes]:
    """``size`` random bytes and their SHA-256, as the worker made them."""
    block = os.urandom(size)
    return hashlib.sha256(block).hexdigest(), block


def digest_and_echo(data: bytes) -> tuple[str, bytes]:
    """The SHA-256 of ``data`` as the worker received it, and ``data`` itself."""
    return hashlib.sha256(data).hexdigest(), data


# -- modules for one side only -----------------------------------------------------------------


def make_module(folder: Path, name: str, source: str) -> Any:
    """Write ``folder/name.py``, put ``folder`` on ``sys.path`` and import it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(source)
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    importlib.invalidate_caches()
    return importlib.import_module(name)


def forget_module(folder: Path, name: str) -> None:
    """Undo :func:`make_module` completely: no process can import ``name`` afterwards."""
    sys.modules.pop(name, None)
    while str(folder) in sys.path:
        sys.path.remove(str(folder))
    shutil.rmtree(folder)
    importlib.invalidate_caches()


# -- running the command ------------------------------------------------------------------------


def cli_environment(base_dir: Path | None, **extra: str) -> dict[str, str]:
    """This process's environment for ``omniq-mp``, quiet, with the store at ``base_dir``
    (None: no OMNIQ_BASE_DIR at all); ``extra`` overrides any of it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIQ_")}
    env["OMNIQ_LOG_LEVEL"] = "WARNING"
    if base_dir is not None:
        env["OMNIQ_BASE_DIR"] = str(base_dir)
    env.update(extra)
    return env


class Run:
    """``python -m omniq_mp ARGS`` as a subprocess against the store ``base`` (given as
    OMNIQ_BASE_DIR unless ``set_base_dir`` is False); ``took`` is how long the last run
    lasted."""

    def __init__(self, base: Path, *, set_base_dir: bool = True) -> None:
        self.base = base
        self.set_base_dir = set_base_dir
        self.took = 0.0

    def __call__(
        self,
        *args: str | bytes,
        timeout: float = 60.0,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        began = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "omniq_mp", *args],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            env=cli_environment(self.base if self.set_base_dir else None, **(env or {})),
            cwd=cwd,
        )
        self.took = time.monotonic() - began
        return done


def usage_error(done: subprocess.CompletedProcess[str]) -> str:
    """Check click's usage-error shape (exit 2; at most the ``Usage:`` and ``Try`` lines,
    then exactly one ``Error: ...`` line, last) and return that line."""
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1, done.stderr
    assert lines[-1] == errors[0], f"lines after the error message:\n{done.stderr}"
    for line in lines[:-1]:
        assert line.startswith(("Usage: ", "Try ")), done.stderr
    return errors[0]


def runtime_error(done: subprocess.CompletedProcess[str]) -> str:
    """Check the runtime-error shape (exit 1, exactly one ``error: ...`` line on stderr)
    and return that line."""
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    return lines[0]
