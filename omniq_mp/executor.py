"""A durable ``concurrent.futures.Executor``: ``submit`` stores a task, worker processes
run it, and the returned :class:`~omniq_mp.futures.TaskFuture` completes from the store.

Unlike a process pool's futures, these survive the workers: a restart of ``omniq-mp
workers`` loses nothing, a future can be re-attached by task id in a new kernel, and
``future.cancel()`` kills a task that is already running.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import math
import operator
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from omniq_mp.config import Settings
from omniq_mp.errors import ConfigError
from omniq_mp.futures import TaskFuture
from omniq_mp.models import Task
from omniq_mp.progress import ProgressBar
from omniq_mp.task_builder import TaskOptions

if TYPE_CHECKING:
    from omniq_mp.sync import OmniQ

__all__ = ["OmniQExecutor", "run_chunk"]

_BATCH = 500  # tasks stored per transaction while submitting many
# The task options an executor fixes for all its tasks (a key would fold them all into one
# task, and an interval or cron would make each one recur).
_TASK_OPTIONS = ("timeout", "max_retries", "queue", "priority", "max_memory", "result_ttl")


def run_chunk(func: Callable[..., Any], calls: Sequence[tuple[Any, ...]]) -> list[Any]:
    """Run ``func`` over several argument tuples in one task (``map(chunksize=n)``)."""
    values = [func(*args) for args in calls]
    if any(inspect.isawaitable(v) for v in values):
        return asyncio.run(_gather(values))
    return values


def check_chunksize(chunksize: object) -> None:
    """Refuse a ``map`` chunk size that is not an int of at least 1."""
    if not isinstance(chunksize, int) or isinstance(chunksize, bool) or chunksize < 1:
        raise ValueError(f"chunksize must be an int >= 1, got {chunksize!r}")


def check_map_timeout(timeout: object) -> None:
    """Refuse a ``map`` timeout that is not None or a number of seconds (negative and zero
    are allowed: as in the standard library, they mean "do not wait")."""
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or math.isnan(timeout):
        raise ConfigError(f"timeout must be None or a number of seconds, got {timeout!r}")


def chunked(batch: Sequence[Any], chunksize: int) -> list[Sequence[Any]]:
    """``batch`` cut into consecutive runs of ``chunksize`` (the last may be shorter)."""
    return [batch[i : i + chunksize] for i in range(0, len(batch), chunksize)]


async def _gather(values: list[Any]) -> list[Any]:
    return [await v if inspect.isawaitable(v) else v for v in values]


class OmniQExecutor(Executor):
    """``concurrent.futures.Executor`` over durable tasks.

    ``OmniQExecutor()`` starts its own embedded supervisor and worker processes (settings
    as keyword arguments, e.g. ``procs=4``, or ``settings=``) and stops them at
    :meth:`shutdown`; ``q.executor()`` shares an existing :class:`~omniq_mp.OmniQ`.

    Every task it submits gets the task options given here (``timeout``, ``max_retries``,
    ``queue``, ``priority``, ``max_memory``, ``result_ttl``); ``submit``'s own keyword
    arguments all go to the function, as ``concurrent.futures`` promises.
    """

    def __init__(
        self,
        omniq: OmniQ | None = None,
        /,
        *,
        timeout: float | None = None,
        max_retries: int | None = None,
        queue: str | None = None,
        priority: int = 0,
        max_memory: str | int | None = None,
        result_ttl: float | None = None,
        **settings: Any,
    ) -> None:
        self._owns = omniq is None
        options: dict[str, Any] = {
            "timeout": timeout,
            "max_retries": max_retries,
            "queue": queue,
            "priority": priority,
            "max_memory": max_memory,
            "result_ttl": result_ttl,
        }
        _refuse_extra(settings, owned=omniq is None)
        # Checked before any worker starts: a bad option would otherwise surface only at
        # the first submit, after an owned supervisor was already up.
        _check_options(options)
        if omniq is None:
            from omniq_mp.sync import OmniQ

            omniq = OmniQ(**settings).__enter__()
        self.omniq = omniq
        self.options = options
        self._pending: set[TaskFuture] = set()
        self._lock = threading.Lock()
        self._shutdown = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> TaskFuture:
        """Store ``fn(*args, **kwargs)`` as a task; return its future.

        :raises SerializationError: the call cannot be pickled (nothing is stored).
        :raises RuntimeError: after :meth:`shutdown`.
        """
        [future] = self._submit_tasks([self._build(fn, args, kwargs)])
        return future

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        progress: bool = False,
    ) -> Iterator[Any]:
        """``fn`` over the zipped ``iterables``, results in order, like ``Executor.map``.

        Everything is stored before the first result is yielded, ``_BATCH`` tasks per
        transaction. ``chunksize`` > 1 runs that many calls per task (fewer, bigger
        tasks). If an iterable raises, the tasks already stored are cancelled and the
        error propagates. ``timeout`` (seconds, from this call) raises ``TimeoutError``
        from the iterator and, as in the standard library, cancels what has not finished.
        ``progress=True`` shows a progress bar of done and failed tasks.
        """
        check_chunksize(chunksize)
        check_map_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        iterables = tuple(iterables)
        hints = [operator.length_hint(it, -1) for it in iterables]
        total = min(hints) if hints and min(hints) >= 0 else None
        calls = zip(*iterables, strict=False)
        bar = ProgressBar(total, getattr(fn, "__name__", "tasks"), enabled=progress)
        try:
            futures = self._submit_calls(fn, calls, chunksize, bar)
        except BaseException:
            bar.close()
            raise
        return self._in_order(futures, deadline, chunksize > 1, bar)

    def _submit_calls(
        self,
        fn: Callable[..., Any],
        calls: Iterator[tuple[Any, ...]],
        chunksize: int,
        bar: ProgressBar,
    ) -> list[TaskFuture]:
        futures: list[TaskFuture] = []
        submitted = 0
        try:
            while batch := list(itertools.islice(calls, _BATCH * chunksize)):
                if chunksize == 1:
                    tasks = [self._build(fn, args, {}) for args in batch]
                else:
                    chunks = chunked(batch, chunksize)
                    tasks = [self._build(run_chunk, (fn, chunk), {}) for chunk in chunks]
                new = self._submit_tasks(tasks)
                submitted += len(batch)
                bar.grow_to(submitted)
                for future, size in zip(new, _sizes(batch, chunksize), strict=True):
                    future.add_done_callback(_counter(bar, size))
                futures += new
        except BaseException:
            # Half a map is worse than none: take back what was stored, then re-raise.
            for future in futures:
                future.cancel()
            raise
        return futures

    def _in_order(
        self, futures: list[TaskFuture], deadline: float | None, chunked: bool, bar: ProgressBar
    ) -> Iterator[Any]:
        futures.reverse()
        try:
            while futures:
                remaining = None if deadline is None else deadline - time.monotonic()
                value = futures[-1].result(remaining)  # on a timeout it is cancelled below
                futures.pop()
                if chunked:
                    yield from value
                else:
                    yield value
        finally:
            for future in futures:
                future.cancel()
            bar.close()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting work; optionally cancel what has not finished, and wait for the
        rest. An executor that started its own supervisor stops it once its futures are
        done: after waiting, or with ``wait=False`` in a background thread, so that (as
        the standard library promises) the futures still complete."""
        with self._lock:
            self._shutdown = True
            pending = list(self._pending)
        if cancel_futures:
            for future in pending:
                future.cancel()
        if wait:
            _wait_all(pending)
        if not self._owns:
            return
        if wait or all(future.done() for future in pending):
            self.omniq.close()
            return
        # A daemon: at interpreter exit the client's own exit hook closes it, and
        # futures still pending then never finish (this thread must not block the exit).
        threading.Thread(
            target=self._close_when_done,
            args=(pending,),
            name="omniq-executor-shutdown",
            daemon=True,
        ).start()

    def _close_when_done(self, pending: list[TaskFuture]) -> None:
        _wait_all(pending)
        self.omniq.close()

    def _build(self, fn: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]) -> Task:
        options = {k: v for k, v in self.options.items() if v is not None}
        return self.omniq.build(fn, args=list(args), kwargs=kwargs, **options)

    def _submit_tasks(self, tasks: list[Task]) -> list[TaskFuture]:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
        futures = [self.omniq.future_of(task_id) for task_id in self.omniq.enqueue_tasks(tasks)]
        with self._lock:
            self._pending.update(futures)
        for future in futures:
            future.add_done_callback(self._discard)
        return futures

    def _discard(self, future: Any) -> None:
        with self._lock:
            self._pending.discard(future)


def _wait_all(futures: Iterable[TaskFuture]) -> None:
    for future in futures:
        try:
            future.exception()
        except BaseException:  # cancelled: nothing to wait for
            pass


def _refuse_extra(names: dict[str, Any], *, owned: bool) -> None:
    """Explain keyword arguments an executor cannot take: task options it does not fix
    for its tasks, or, on a client given to it, settings (only an owned client takes
    them; an unknown name there is left to Settings, which names it)."""
    refused = sorted(set(names) & ({f.name for f in fields(TaskOptions)} | {"cron", "tz"}))
    if refused:
        raise TypeError(
            f"an executor (and OmniQ.map) sets only the task options "
            f"{', '.join(_TASK_OPTIONS)}; got {refused}"
        )
    if owned or not names:
        return
    unknown = sorted(set(names) - {f.name for f in fields(Settings)})
    if unknown:
        raise TypeError(f"unknown options {unknown}; an executor takes {', '.join(_TASK_OPTIONS)}")
    raise TypeError(f"settings {sorted(names)} apply only when the executor owns its OmniQ")


def _check_options(options: dict[str, Any]) -> None:
    """Raise ConfigError for a bad task option, as ``enqueue`` would (None: the client's
    default, checked by its settings)."""
    TaskOptions.checked(**{k: v for k, v in options.items() if v is not None})


def _sizes(batch: list[Any], chunksize: int) -> list[int]:
    return [len(chunk) for chunk in chunked(batch, chunksize)]


def _counter(bar: ProgressBar, size: int) -> Callable[[Any], None]:
    def count(future: Any) -> None:
        bar.count(not future.cancelled() and future.exception() is None, items=size)

    return count
