"""How calls and results cross process boundaries.

A call is ``cloudpickle.dumps((target, args, kwargs))`` where ``target`` is a callable
(lambdas, closures and ``__main__`` functions are pickled by value) or a dotted path string
resolved in the worker. Only the producer pickles calls, only the worker unpickles them, and
only the client unpickles results: the supervisor moves the bytes untouched.
"""

from __future__ import annotations

import importlib
import io
import pickle
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import cloudpickle
from loguru import logger

from omniq_mp.envelope import VersionSkewError, code_hash, local_header, seal, split
from omniq_mp.errors import SerializationError
from omniq_mp.signing import RESULT, Signer, open_blob

__all__ = [
    "VersionSkewError",
    "callable_name",
    "dumps_call",
    "dumps_result",
    "loads_call",
    "loads_result",
    "resolve",
]

Call = tuple[Callable[..., Any] | str, tuple[Any, ...], dict[str, Any]]


def callable_name(target: Callable[..., Any] | str) -> str:
    """A readable name for logs and ``Task.func_name``: ``module.qualname`` or the path."""
    if isinstance(target, str):
        return target
    module = getattr(target, "__module__", None) or "?"
    qualname = getattr(target, "__qualname__", None) or type(target).__qualname__
    return f"{module}.{qualname}"


def dumps_call(
    target: Callable[..., Any] | str, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> bytes:
    """Pickle a call, or raise :class:`SerializationError` naming the part that cannot pickle."""
    if not isinstance(target, str) and not callable(target):
        raise SerializationError(
            f"cannot enqueue a {type(target).__name__}: expected a callable or a dotted path"
        )
    try:
        body = _dumps((target, tuple(args), dict(kwargs)))
    except Exception as exc:
        raise SerializationError(_blame(target, args, kwargs, exc)) from exc
    return seal(local_header(code_hash(target)), body)


# loguru's global logger is passed by name, not by value: a function from __main__ that
# logs would otherwise carry the producer's handlers (files, queues) into the pickle, and
# fail to pickle at all once a handler holds a queue. The worker gets its own logger,
# whose records go back to the supervisor's sinks.
_LOGGER_ID = "loguru.logger"


class _Pickler(cloudpickle.Pickler):  # type: ignore[misc]
    def persistent_id(self, obj: Any) -> str | None:
        return _LOGGER_ID if obj is logger else None


class _Unpickler(pickle.Unpickler):
    def persistent_load(self, pid: Any) -> Any:
        if pid == _LOGGER_ID:
            return logger
        raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")


def _dumps(value: Any) -> bytes:
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(value)
    return buffer.getvalue()


def _blame(
    target: Callable[..., Any] | str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    exc: Exception,
) -> str:
    # Pickle each part alone so the message points at the culprit, not just "the call".
    parts: list[tuple[str, Any]] = [("the callable", target)]
    parts += [(f"argument {i}", a) for i, a in enumerate(args)]
    parts += [(f"keyword argument {k!r}", v) for k, v in kwargs.items()]
    for label, value in parts:
        try:
            cloudpickle.dumps(value)
        except Exception as part_exc:
            return (
                f"cannot enqueue {callable_name(target)}: {label} "
                f"(a {type(value).__name__}) cannot be pickled: {part_exc}"
            )
    return f"cannot enqueue {callable_name(target)}: {exc}"


def resolve(path: str) -> Callable[..., Any]:
    """Import ``package.module.function`` or ``package.module:function``."""
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ImportError(f"{path!r} is not a dotted path like 'package.module.function'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError:
        raise
    except Exception as exc:
        # The module's own code failed (a RuntimeError at import, a bad config read...): it
        # is still a path that does not import, which retrying cannot help; its traceback
        # stays attached as the cause.
        raise ImportError(
            f"importing module {module_name!r} raised {type(exc).__name__}: {exc}"
        ) from exc
    for name in attr.split("."):
        try:
            obj = getattr(obj, name)
        except AttributeError:
            raise ImportError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not callable(obj):
        raise ImportError(f"{path!r} is a {type(obj).__name__}, not a callable")
    return obj  # type: ignore[no-any-return]


def loads_call(payload: bytes) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
    """Unpickle a call in the worker, resolving a dotted path to its function.

    :raises VersionSkewError: the call carries code this interpreter cannot run, or it
        fails to unpickle and was pickled by another Python or cloudpickle version (the
        message names both).
    :raises ImportError: a dotted path (or a by-reference function) does not import.
    """
    header, body = split(payload)
    if header is not None:
        header.check_runnable_here()
    try:
        target, args, kwargs = _Unpickler(io.BytesIO(body)).load()
    except ImportError:
        raise
    except Exception as exc:
        here = local_header()
        if header is not None and (header.python, header.cloudpickle) != (
            here.python,
            here.cloudpickle,
        ):
            raise VersionSkewError(
                f"the task was pickled under {header.describe()} and cannot be unpickled "
                f"by this worker's {here.describe()}: {exc!r}"
            ) from exc
        raise
    func = resolve(target) if isinstance(target, str) else target
    return func, tuple(args), dict(kwargs)


def dumps_result(value: Any) -> bytes:
    """Pickle a task's return value in the worker."""
    return bytes(cloudpickle.dumps(value))


def loads_result(data: bytes, *, signer: Signer | None = None, task_id: str = "") -> Any:
    """Unpickle a stored result in the client; with a ``signer``, only once its signature
    for ``task_id`` checks out.

    :raises SignatureError: the result is unsigned, altered, or signed for another task.
    :raises SerializationError: it does not unpickle here.
    """
    body = open_blob(signer, task_id, RESULT, data)
    try:
        return pickle.loads(body)
    except Exception as exc:
        raise SerializationError(f"the stored result cannot be unpickled here: {exc!r}") from exc
