"""How calls and results cross process boundaries.

A call is the pickle of ``(target, args, kwargs)``. ``target`` is one of:

- a dotted path string, resolved in the worker. A function the worker can import is
  written this way too: it is the reference cloudpickle would record, without cloudpickle
  walking the function to find that out for every call;
- the bytes of ``cloudpickle.dumps(function)`` for code that travels by value (lambdas,
  closures, ``__main__`` and notebook functions). Pickled apart from the arguments, it is
  pickled once for a whole ``enqueue_many`` or ``map``;
- a callable pickled inline (payloads written before the two forms above).

Arguments of plain built-in types (numbers, strings, bytes, and small lists, tuples and
dicts of them) go through the C pickler; anything else through cloudpickle. Only the
producer pickles calls, only the worker unpickles them, and only the client unpickles
results: the supervisor moves the bytes untouched.
"""

from __future__ import annotations

import importlib
import io
import pickle
import sys
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import cloudpickle
from loguru import logger

from omniq_mp.dotted_path import split_dotted_path
from omniq_mp.envelope import VersionSkewError, code_hash, local_header, seal, split
from omniq_mp.errors import SerializationError
from omniq_mp.signing import RESULT, Signer, open_blob

__all__ = [
    "CallPickler",
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
    return CallPickler(target).dumps(args, kwargs)


class CallPickler:
    """Pickles calls of one target: the target once, here, then each call's arguments.

    A by-value target's globals are captured as they are now, for every call pickled
    through this object.

    :raises SerializationError: ``target`` is not a callable or a dotted path, or it
        cannot be pickled.
    """

    def __init__(self, target: Callable[..., Any] | str) -> None:
        if not isinstance(target, str) and not callable(target):
            raise SerializationError(
                f"cannot enqueue a {type(target).__name__}: expected a callable or a dotted path"
            )
        self.target = target
        code = code_hash(target)
        self._prefix = seal(local_header(code), b"")  # the header, the same for every call
        self._written: str | bytes
        if isinstance(target, str):
            self._written = target
        elif code is None and (path := _import_path(target)) is not None:
            self._written = path
        else:
            try:
                self._written = _dumps(target)
            except Exception as exc:
                raise SerializationError(_blame(target, (), {}, exc)) from exc

    @property
    def by_reference(self) -> bool:
        """The target is written as a name the worker resolves, not as pickled code."""
        return isinstance(self._written, str)

    def dumps(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> bytes:
        """The payload of ``target(*args, **kwargs)``.

        :raises SerializationError: an argument cannot be pickled (the message names it).
        """
        call = (self._written, tuple(args), dict(kwargs))
        try:
            body = _dumps_plain(call) if _is_plain(call[1]) and _is_plain(call[2]) else _dumps(call)
        except Exception as exc:
            raise SerializationError(_blame(self.target, args, kwargs, exc)) from exc
        return self._prefix + body


def _import_path(target: Callable[..., Any]) -> str | None:
    """``module:qualname`` for a plain function the worker imports by name, else None.

    Only functions qualify: a class, a bound method or a callable object carries state
    (or construction) that a path does not. Modules registered with cloudpickle's
    ``register_pickle_by_value`` are left to cloudpickle, which carries their code.
    """
    if type(target) is not types.FunctionType:
        return None
    module = target.__module__
    if not module or module not in sys.modules:
        return None
    registered = cloudpickle.list_registry_pickle_by_value()
    if registered and any(
        ".".join(module.split(".")[: i + 1]) in registered for i in range(module.count(".") + 1)
    ):
        return None
    return f"{module}:{target.__qualname__}"


_ATOMS = frozenset({str, int, float, bool, bytes, type(None)})
_PLAIN_DEPTH = 3
_PLAIN_ITEMS = 64  # past this, walking the container costs more than cloudpickle's setup


def _is_plain(value: Any, depth: int = 0) -> bool:
    # Exact types only: a subclass of int or dict may be a __main__ class, which the C
    # pickler would record by a name the worker cannot import.
    kind = type(value)
    if kind in _ATOMS or ((kind is tuple or kind is dict) and not value):
        return True
    if kind not in (tuple, list, dict) or depth == _PLAIN_DEPTH or len(value) > _PLAIN_ITEMS:
        return False
    if kind is dict:
        return all(type(k) in _ATOMS and _is_plain(v, depth + 1) for k, v in value.items())
    return all(_is_plain(v, depth + 1) for v in value)


def _dumps_plain(value: Any) -> bytes:
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


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
    module_name, attr = split_dotted_path(path)
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
        if isinstance(target, bytes):  # a by-value function, pickled apart from its arguments
            target = _Unpickler(io.BytesIO(target)).load()
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
