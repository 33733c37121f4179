"""Turning stored task states into completions: one watcher per client resolves every
future and handle waiting on a task, with one batched read per sweep instead of a poll per
task."""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence

from loguru import logger

from omniq_mp.errors import ClientClosedError, StorageError
from omniq_mp.models import Task

__all__ = ["ResultWatcher", "StoredSignal"]

# (task id, the finished task; None: it is gone; ClientClosedError: nobody will look again)
Finished = Callable[[str, Task | ClientClosedError | None], None]

_MIN_DELAY = 0.002
_MAX_DELAY = 0.05  # a result finished elsewhere is seen within 50 ms
_CHEAP_SWEEP = 256  # ids a sweep may read without counting against the budget
_SWEEP_SHARE = 10  # wait at least 10x a sweep's duration: sweeps stay under ~10% of the loop


class ResultWatcher:
    """Calls back, on the event loop, when watched tasks reach a terminal status.

    Each sweep reads every watched task in one ``get_many``; sweeps back off from 2 ms to
    50 ms while nothing finishes. An embedded supervisor's settlements (``notify``) are
    checked at once, without a full sweep, so a drain of thousands of tasks does not cost
    thousands of full sweeps.
    """

    def __init__(self, get_many: Callable[[Sequence[str]], Awaitable[list[Task]]]) -> None:
        self._get_many = get_many
        self._watched: dict[str, list[Finished]] = {}
        self._hot: set[str] = set()
        self._wake = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._poked = False
        self._earliest_sweep = 0.0  # loop time before which a poke may not force a sweep
        self._failures = 0  # reads failed in a row

    def watch(self, task_id: str, callback: Finished) -> None:
        """Call ``callback`` once ``task_id`` is finished (or found missing)."""
        self._watched.setdefault(task_id, []).append(callback)
        self._hot.add(task_id)  # it may be finished already: look at it in the next round
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run(), name="omniq-result-watcher")
        self._wake.set()

    def unwatch(self, task_id: str, callback: Finished) -> None:
        """Forget a callback (its waiter gave up)."""
        callbacks = self._watched.get(task_id, [])
        if callback in callbacks:
            callbacks.remove(callback)
        if not callbacks:
            self._watched.pop(task_id, None)

    def notify(self, task_id: str) -> None:
        """A settlement of ``task_id`` was just written: look at it now."""
        if task_id in self._watched:
            self._hot.add(task_id)
            self._wake.set()

    def poke(self) -> None:
        """Another process stored outcomes: sweep soon (as soon as the sweep budget
        allows), instead of at the end of the back-off."""
        if self._watched:
            self._poked = True
            self._wake.set()

    async def close(self) -> None:
        """Stop sweeping, after one last look at every watched task (the store must still
        be open); callbacks of tasks still unfinished get a :class:`ClientClosedError`, so
        no future or waiter is left hanging."""
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
        if self._watched:
            with contextlib.suppress(Exception):  # a store that fails now: report as closed
                await self._check(list(self._watched))
        watched, self._watched = self._watched, {}
        for task_id, callbacks in watched.items():
            closed = ClientClosedError(
                f"task {task_id} had not finished when its client closed; it stays in the "
                "store: read its outcome with a new client"
            )
            for callback in callbacks:
                _call(callback, task_id, closed)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        delay = _MIN_DELAY
        next_sweep = loop.time()
        while self._watched:
            if self._poked:
                self._poked = False
                next_sweep = min(next_sweep, max(loop.time(), self._earliest_sweep))
            full = loop.time() >= next_sweep
            ids = list(self._watched) if full else [i for i in self._hot if i in self._watched]
            self._hot.clear()
            started = loop.time()
            try:
                finished = await self._check(ids)
            except Exception as exc:
                # A store failing for a while (a lost connection, a file that cannot be
                # read now) must not end the watch: every waiter would wait for ever.
                self._failing(exc)
                next_sweep = loop.time() + _MAX_DELAY  # then every watched task again
                await asyncio.sleep(_MAX_DELAY)
                continue
            if self._failures:
                logger.bind(action="result_watch_resumed").info(
                    "reading watched tasks works again after {} failed tries", self._failures
                )
                self._failures = 0
            if full:
                spent = loop.time() - started
                delay = _MIN_DELAY if finished else min(delay * 2, _MAX_DELAY)
                delay = max(delay, spent * _SWEEP_SHARE)
                next_sweep = loop.time() + delay
                # A poke may force the next sweep at once while sweeps are cheap; a big
                # watched set keeps its sweeps under ~10% of the loop even when poked.
                budget = spent * _SWEEP_SHARE if len(ids) > _CHEAP_SWEEP else 0.0
                self._earliest_sweep = loop.time() + budget
            if self._hot or self._poked:
                continue
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), max(0.0, next_sweep - loop.time()))
            except TimeoutError:
                pass

    def _failing(self, exc: Exception) -> None:
        self._failures += 1
        if self._failures == 1:  # once per outage, not 20 times a second
            trace = None if isinstance(exc, StorageError) else exc  # a bug: show where
            logger.bind(action="result_watch_failing").opt(exception=trace).warning(
                "cannot read watched tasks ({}); trying again every {} s", exc, _MAX_DELAY
            )

    async def _check(self, ids: list[str]) -> int:
        if not ids:
            return 0
        tasks = {task.id: task for task in await self._get_many(ids)}
        done = 0
        for task_id in ids:
            task = tasks.get(task_id)
            if task is not None and not task.status.is_terminal:
                continue
            for callback in self._watched.pop(task_id, []):
                _call(callback, task_id, task)
            done += 1
        return done


def _call(callback: Finished, task_id: str, outcome: Task | ClientClosedError | None) -> None:
    try:
        callback(task_id, outcome)
    except Exception:  # one bad callback must not stop every other future
        logger.opt(exception=True).error("a completion callback of {} failed", task_id)


class StoredSignal:
    """Lets threads wait for a task's outcome in their own thread (:meth:`wait_for`),
    woken on a poke (a supervisor elsewhere stored outcomes, which ones unknown) or when
    this process's own supervisor settles a task one of them waits for.

    :param readers: threads that may wait here at once; one more is refused by
        :meth:`enter` and waits through the shared :class:`ResultWatcher` instead, whose
        sweeps read many tasks at once (each waiter here reads its own task on every poke).
    """

    def __init__(self, readers: int = 8) -> None:
        self.generation = 0
        self._readers = readers
        self._waited: Counter[str] = Counter()  # task id: threads waiting for it
        self._changed = threading.Condition(threading.Lock())

    def wait_for(
        self, task_id: str, read: Callable[[str], Task | None], timeout: float | None
    ) -> Task | None:
        """Read ``task_id`` with ``read`` (in this thread) until it is finished or missing,
        or ``timeout`` seconds pass; the last read, or None when every place is taken.

        It reads again on each :meth:`bump` that concerns it, else after a pause growing
        from 2 to 50 ms, as the watcher's sweeps do. The generation is noted before each
        read, so an outcome stored between a read and the wait after it is not missed."""
        if not self.enter(task_id):
            return None
        try:
            deadline = math.inf if timeout is None else time.monotonic() + timeout
            pause = _MIN_DELAY
            while True:
                seen = self.generation
                task = read(task_id)
                left = deadline - time.monotonic()
                if task is None or task.status.is_terminal or left <= 0:
                    return task
                if not self.wait_after(seen, min(pause, left)):
                    pause = min(pause * 2, _MAX_DELAY)
        finally:
            self.leave(task_id)

    def bump(self) -> None:
        """Outcomes may have been stored: wake every waiting thread (from any thread)."""
        with self._changed:
            self.generation += 1
            self._changed.notify_all()

    def settled(self, task_id: str) -> None:
        """This process settled ``task_id``: wake the waiters only if one waits for it (a
        drain settles thousands of tasks a second that nobody here waits for)."""
        if task_id in self._waited:  # entered before its first read: never missed
            self.bump()

    def enter(self, task_id: str) -> bool:
        """Claim a waiter's place for ``task_id`` (before the first read of it); False
        when all are taken. Pair with :meth:`leave`."""
        with self._changed:
            if self._waited.total() >= self._readers:
                return False
            self._waited[task_id] += 1
            return True

    def leave(self, task_id: str) -> None:
        """Give back the place :meth:`enter` claimed."""
        with self._changed:
            self._waited[task_id] -= 1
            if not self._waited[task_id]:
                del self._waited[task_id]

    def wait_after(self, generation: int, timeout: float) -> bool:
        """Block until :meth:`bump` moves past ``generation`` or ``timeout`` seconds pass;
        True if it moved."""
        with self._changed:
            return self._changed.wait_for(lambda: self.generation != generation, timeout)
