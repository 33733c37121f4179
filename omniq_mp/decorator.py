"""``@q.task(...)``: a function that still runs when called, and also runs as a task."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterable
from typing import Any

from omniq_mp.serialization import resolve

__all__ = ["TaskFunction"]


class TaskFunction:
    """A function with task options attached; made by ``@q.task(timeout=30, ...)``.

    Calling it runs it here, as before. ``.enqueue(*args, **kwargs)`` stores it as a task
    (the client's :meth:`enqueue`: a task id, or a coroutine of one for ``AsyncOmniQ``),
    ``.submit(...)`` returns a future (a handle for ``AsyncOmniQ``), ``.map(items)`` runs
    it over items. Every keyword argument goes to the function; the options given to the
    decorator apply (change them with :meth:`options`).

    A decorated function in an importable module travels to workers by name, so workers
    run the module's code as deployed; one defined in ``__main__`` or a notebook travels
    by value.
    """

    def __init__(self, func: Callable[..., Any], client: Any, options: dict[str, Any]) -> None:
        if not callable(func):
            raise TypeError(f"@task needs a function, got {type(func).__name__}")
        functools.update_wrapper(self, func)
        self.func = func
        self.client = client  # None in a worker: there it is only called directly
        self.task_options = dict(options)
        if client is not None:
            # Check the options now, at the decorator, rather than at the first enqueue.
            client.build(_check_options, **self.task_options)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.func(*args, **kwargs)

    def enqueue(self, *args: Any, **kwargs: Any) -> Any:
        """Store a call as a task; returns the task id (awaitable for ``AsyncOmniQ``)."""
        return self._bound().enqueue(
            self._target(), args=list(args), kwargs=kwargs, **self.task_options
        )

    def submit(self, *args: Any, **kwargs: Any) -> Any:
        """Store a call as a task; returns a future (``TaskHandle`` for ``AsyncOmniQ``)."""
        return self._bound().submit(
            self._target(), args=list(args), kwargs=kwargs, **self.task_options
        )

    def map(self, *iterables: Iterable[Any], **map_options: Any) -> Any:
        """The function over the zipped iterables, as tasks; see ``OmniQ.map``."""
        return self._bound().map(self._target(), *iterables, **self.task_options, **map_options)

    def options(self, **changes: Any) -> TaskFunction:
        """The same function with some task options changed."""
        return TaskFunction(self.func, self.client, {**self.task_options, **changes})

    def _bound(self) -> Any:
        if self.client is None:
            raise RuntimeError(
                f"{self.func.__qualname__} was unpickled without its client; call it directly"
            )
        return self.client

    def _target(self) -> Callable[..., Any] | str:
        # By name when the module holds this very object, so the worker imports it.
        path = _importable_path(self)
        return path if path is not None else self.func

    def __reduce__(self) -> tuple[Any, ...]:
        path = _importable_path(self)
        if path is not None:
            return resolve, (path,)
        return TaskFunction, (self.func, None, self.task_options)

    def __repr__(self) -> str:
        return f"<task {self.func.__module__}.{self.func.__qualname__} {self.task_options}>"


def _importable_path(obj: TaskFunction) -> str | None:
    module = getattr(obj, "__module__", None)
    qualname: str = getattr(obj, "__qualname__", "")
    if not module or module == "__main__" or "<" in qualname:
        return None
    found: Any = sys.modules.get(module)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    return f"{module}:{qualname}" if found is obj else None


def _check_options() -> None:
    """Stands in for the function when the decorator validates its options."""
