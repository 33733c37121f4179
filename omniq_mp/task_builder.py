"""Turning calls into tasks: options checked, the call pickled, the payload signed.

:class:`TaskBuilder` does the per-batch work once (checking options, pickling the target)
so that ``enqueue_many`` and ``map`` pay only for each call's arguments.
"""

from __future__ import annotations

import math
import time
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import cloudpickle

from omniq_mp.config import check_seconds
from omniq_mp.dotted_path import is_dotted_path
from omniq_mp.errors import ConfigError, SerializationError
from omniq_mp.models import Task, new_id
from omniq_mp.payload_size import warn_if_large
from omniq_mp.serialization import CallPickler, callable_name
from omniq_mp.signing import ANY, PAYLOAD, Signer, strip
from omniq_mp.units import format_bytes, parse_bytes, parse_duration

__all__ = [
    "INT64_MAX",
    "INT64_MIN",
    "MAX_RETRIES",
    "ReferenceBuilders",
    "TaskBuilder",
    "TaskOptions",
    "build_task",
    "sign_payload",
]

# Stores keep integers in 64 bits (SQLite's INTEGER, PostgreSQL's bigint): a larger one
# would fail the enqueue with an OverflowError deep in the driver, not name the option.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# PostgreSQL keeps retry counts in 32 bits: past this an enqueue failed there alone.
MAX_RETRIES = 2**31 - 1


@dataclass(frozen=True)
class TaskOptions:
    """Task options in checked, normalized form (seconds, bytes). Build with :meth:`checked`."""

    queue: str = "default"
    priority: int = 0
    eta: datetime | timedelta | None = None  # made absolute at each build
    interval: float | None = None
    max_retries: int = 3
    timeout: float | None = None
    key: str | None = None
    max_memory: int | None = None
    result_ttl: float | None = None

    @classmethod
    def checked(
        cls,
        *,
        queue: str = "default",
        priority: int = 0,
        eta: datetime | timedelta | None = None,
        interval: timedelta | int | float | None = None,
        max_retries: int = 3,
        timeout: float | None = None,
        key: str | None = None,
        max_memory: str | int | None = None,
        result_ttl: timedelta | float | None = None,
    ) -> TaskOptions:
        """The options, or :class:`ConfigError` (a ValueError) naming the bad one."""
        if not isinstance(queue, str) or not queue:
            raise ConfigError(f"queue must be a non-empty string, got {queue!r}")
        # PostgreSQL's text cannot hold NUL: refused everywhere, so a queue works on any store.
        if "\x00" in queue:
            raise ConfigError(f"queue must not contain a NUL character, got {queue!r}")
        _check_int64("priority", priority, INT64_MIN)
        _check_int64("max_retries", max_retries, 0, MAX_RETRIES)
        if timeout is not None:
            timeout = check_seconds("timeout", timeout)
        if key is not None and (not isinstance(key, str) or not key.strip() or "\x00" in key):
            raise ConfigError(f"key must be a non-empty string without NUL, got {key!r}")
        memory = None if max_memory is None else parse_bytes("max_memory", max_memory)
        if memory is not None:
            _check_int64("max_memory", memory, 1)
        _eta_seconds(eta, 0.0)  # checks its type
        return cls(
            queue=queue,
            priority=priority,
            eta=eta,
            interval=_interval_seconds(interval),
            max_retries=max_retries,
            timeout=timeout,
            key=key,
            max_memory=memory,
            result_ttl=None if result_ttl is None else parse_duration("result_ttl", result_ttl),
        )


class TaskBuilder:
    """Builds tasks of one target with one set of options, pickling the target once.

    :param signer: signs each payload for its task (None: signing off).
    :param max_payload_size: bytes a pickled call may take; a bigger one is refused.
    :raises ConfigError: ``target`` is an empty dotted path.
    :raises SerializationError: ``target`` is not a callable, or cannot be pickled.
    """

    def __init__(
        self,
        target: Callable[..., Any] | str,
        options: TaskOptions,
        *,
        signer: Signer | None = None,
        max_payload_size: int | None = None,
    ) -> None:
        if isinstance(target, str):
            _check_dotted_path(target)
        self.options = options
        self._pickler = CallPickler(target)
        self._func_name = callable_name(target)
        self._signer = signer
        self._max_payload_size = max_payload_size

    @property
    def by_reference(self) -> bool:
        """The target is stored as a name the worker resolves (an importable function or
        a dotted path), so its tasks do not depend on the state of the caller's globals."""
        return self._pickler.by_reference

    def build(
        self,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        now: float | None = None,
    ) -> Task:
        """A new task calling the target with these arguments; nothing is stored.

        :raises ConfigError: ``args`` is not a list or tuple, or ``kwargs`` not a mapping.
        :raises SerializationError: an argument cannot be pickled, or the call pickles to
            more than ``max_payload_size``.
        """
        now = time.time() if now is None else now
        if not isinstance(args, tuple | list) and (
            args is None or isinstance(args, str | bytes) or not isinstance(args, Iterable)
        ):
            raise ConfigError(f"args must be a list or tuple, got {type(args).__name__}")
        if kwargs is None:
            kwargs = {}
        elif not isinstance(kwargs, Mapping):
            raise ConfigError(f"kwargs must be a dict, got {type(kwargs).__name__}")
        elif kwargs and not all(type(name) is str for name in kwargs):
            names = [name for name in kwargs if type(name) is not str]
            raise ConfigError(f"kwargs keys must be argument names (strings), got {names[0]!r}")
        payload = self._pickler.dumps(args, kwargs)
        target = self._pickler.target
        limit = self._max_payload_size
        if limit is not None and len(payload) > limit:
            raise SerializationError(
                f"cannot enqueue {self._func_name}: the call pickles to "
                f"{format_bytes(len(payload))}, over max_payload_size "
                f"({format_bytes(limit)}); pass a file path or a URL to the data "
                "and load it inside the task"
            )
        warn_if_large(target, tuple(args), kwargs, len(payload))
        o = self.options
        task_id = new_id()
        task = Task(
            id=task_id,
            func_name=self._func_name,
            payload=payload,
            queue=o.queue,
            priority=o.priority,
            eta=_eta_seconds(o.eta, now),
            interval=o.interval,
            timeout=o.timeout,
            max_retries=o.max_retries,
            created_at=now,
            # Every run of an interval task has an id of its own and keeps its first run's
            # key: that key is how cancel() finds the run to stop from any run's id.
            key=o.key if o.key is not None or o.interval is None else task_id,
            max_memory=o.max_memory,
            result_ttl=o.result_ttl,
        )
        return sign_payload(task, self._signer, recurring=o.interval is not None)


class ReferenceBuilders:
    """The builders of option-less calls, kept per target, for targets the worker imports
    by name: ``enqueue(f, x)`` in a loop then pays for its arguments only, not for checking
    options and inspecting ``f`` again (about a fifth of a single enqueue's CPU).

    A by-value target (lambda, closure, ``__main__`` function) is never kept: its pickle
    carries its globals as they are at each enqueue. A module registered with cloudpickle's
    ``register_pickle_by_value`` after a builder was kept turns its functions into by-value
    targets, so a change of that registry forgets every kept builder.

    :param make: builds the builder of a target (the client's defaults applied).
    """

    _KEPT = 256  # targets; past this the cache starts over (a long-lived client may see
    # many distinct functions, and each entry holds its function alive)

    def __init__(self, make: Callable[[Callable[..., Any] | str], TaskBuilder]) -> None:
        self._make = make
        self._kept: dict[Callable[..., Any] | str, TaskBuilder] = {}
        self._registry = cloudpickle.list_registry_pickle_by_value()

    def get(self, target: Callable[..., Any] | str) -> TaskBuilder:
        """The builder of calls to ``target`` with default options."""
        # Only types that hash by identity or by value: an arbitrary callable object may
        # define __eq__ without __hash__, or compare equal to a different callable.
        if not isinstance(target, str) and type(target) is not types.FunctionType:
            return self._make(target)
        registry = cloudpickle.list_registry_pickle_by_value()
        if registry != self._registry:
            self._kept.clear()
            self._registry = registry
        builder = self._kept.get(target)
        if builder is None:
            builder = self._make(target)
            if builder.by_reference:
                if len(self._kept) >= self._KEPT:
                    self._kept.clear()
                self._kept[target] = builder
        return builder


def build_task(
    target: Callable[..., Any] | str,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    now: float | None = None,
    signer: Signer | None = None,
    max_payload_size: int | None = None,
    **options: Any,
) -> Task:
    """Validate options (those of :meth:`TaskOptions.checked`) and pickle the call into a
    new :class:`Task`, signed with ``signer`` when given (see :func:`sign_payload`).

    Raises :class:`ConfigError` (a ValueError) for a bad option and
    :class:`SerializationError` for a call that cannot be pickled; nothing is stored.
    """
    builder = TaskBuilder(
        target, TaskOptions.checked(**options), signer=signer, max_payload_size=max_payload_size
    )
    return builder.build(args, kwargs, now)


def sign_payload(task: Task, signer: Signer | None, *, recurring: bool = False) -> Task:
    """``task`` with its payload signed for its id, or, when ``recurring`` (interval runs
    and cron firings get new ids), for any task. Any earlier signature is replaced; without
    a signer the task is returned unchanged."""
    if signer is None:
        return task
    body = strip(task.payload)
    return replace(task, payload=signer.seal(ANY if recurring else task.id, PAYLOAD, body))


def _check_int64(name: str, value: object, minimum: int, maximum: int = INT64_MAX) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an int, got {value!r}")
    if not minimum <= value <= maximum:
        if minimum == INT64_MIN:
            bounds = "a 64-bit integer"
        elif maximum == INT64_MAX:
            bounds = f"an int >= {minimum} below 2**63"
        else:
            bounds = f"an int from {minimum} to {maximum}"
        raise ConfigError(f"{name} must be {bounds}, got {value!r}")


def _check_dotted_path(path: str) -> None:
    # Checked here, not when a worker fails to import it: a path that cannot name a
    # function would otherwise be stored and fail every attempt.
    if not is_dotted_path(path):
        raise ConfigError(
            f"{path!r} is not a dotted path: name a module and a function, like "
            "'package.module.function' or 'package.module:function'"
        )


def _eta_seconds(eta: datetime | timedelta | None, now: float) -> float:
    if eta is None:
        return now
    if isinstance(eta, timedelta):
        return now + eta.total_seconds()
    if isinstance(eta, datetime):
        try:
            return eta.timestamp()  # a naive datetime is local time, as datetime.now() gives
        except (ValueError, OverflowError, OSError):  # datetime.min, far past or future
            raise ConfigError(f"eta {eta!r} is outside the range of timestamps") from None
    raise ConfigError(f"eta must be a datetime or a timedelta, got {type(eta).__name__}")


def _interval_seconds(interval: timedelta | int | float | None) -> float | None:
    if interval is None:
        return None
    if isinstance(interval, timedelta):
        seconds = interval.total_seconds()
    elif isinstance(interval, int | float) and not isinstance(interval, bool):
        seconds = float(interval)
    else:
        raise ConfigError(f"interval must be a timedelta or seconds, got {interval!r}")
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"interval must be positive, got {interval!r}")
    return seconds
