"""Group commit: enqueue calls that arrive while a commit is being synced wait for it to
end, then share the next commit, so many concurrent producers pay for a few fsyncs
instead of one each.

A store hands each class a ``commit`` function that stores several calls' tasks in one
transaction and returns, per call, its task ids or the exception that refused that call
alone (see ``SQLiteStorage``); an exception raised by ``commit`` itself means nothing of
the group was stored, and every call of the group raises it. Calls keep the order they
were made in. A call alone costs what it did before: it commits at once.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from omniq_mp.errors import StorageError
from omniq_mp.models import Task

__all__ = ["LoopGroups", "Outcomes", "ThreadGroups"]

# Per call of a group: its ids, or what refused it.
Outcomes = Sequence["list[str] | BaseException"]


class LoopGroups:
    """Group commit for coroutines of one event loop; ``commit`` is a coroutine function
    (it runs the transaction in the store's thread)."""

    def __init__(self, commit: Callable[[list[Sequence[Task]]], Awaitable[Outcomes]]) -> None:
        self._commit = commit
        self._waiting: list[tuple[Sequence[Task], asyncio.Future[list[str]]]] = []
        self._committer: asyncio.Task[None] | None = None

    async def enqueue(self, tasks: Sequence[Task]) -> list[str]:
        """Store ``tasks`` in the next commit; their ids."""
        waiter: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        self._waiting.append((tasks, waiter))
        if self._committer is None:
            self._committer = asyncio.create_task(self._commit_waiting(), name="omniq-enqueue")
        return await waiter

    async def drain(self) -> None:
        """Return once every call made so far has its answer."""
        if self._committer is not None:
            await asyncio.wait([self._committer])

    async def _commit_waiting(self) -> None:
        try:
            while self._waiting:
                # A call cancelled before its turn stores nothing: it raised, after all.
                group = [(tasks, waiter) for tasks, waiter in self._waiting if not waiter.done()]
                self._waiting = []
                if not group:
                    continue
                try:
                    outcomes = await self._commit([tasks for tasks, _ in group])
                except Exception as exc:
                    outcomes = [exc] * len(group)
                for (_, waiter), outcome in zip(group, outcomes, strict=True):
                    if waiter.done():  # cancelled during the commit: its tasks are stored
                        continue
                    if isinstance(outcome, BaseException):
                        waiter.set_exception(outcome)
                    else:
                        waiter.set_result(outcome)
        except asyncio.CancelledError:  # the loop is going away: nobody gets an answer
            for _, waiter in self._waiting:
                waiter.cancel()
            raise
        finally:
            self._committer = None


@dataclass(eq=False)
class _Call:
    tasks: Sequence[Task]
    outcome: list[str] | BaseException | None = None


class ThreadGroups:
    """Group commit for threads: the thread that finds no commit under way commits every
    call waiting (its own first), on its own connection, while later callers sleep; one
    of them commits the next group. ``commit`` runs in the committing thread."""

    def __init__(self, commit: Callable[[list[Sequence[Task]]], Outcomes]) -> None:
        self._commit = commit
        self._turn = threading.Condition(threading.Lock())
        self._waiting: list[_Call] = []
        self._committing = False

    def enqueue(self, tasks: Sequence[Task]) -> list[str]:
        """Store ``tasks`` in the next commit, from any thread; their ids."""
        call = _Call(tasks)
        with self._turn:
            self._waiting.append(call)
            while self._committing and call.outcome is None:
                self._turn.wait()
            group: list[_Call] = []
            if call.outcome is None:  # this thread commits what is waiting
                self._committing = True
                group, self._waiting = self._waiting, []
        if group:
            self._commit_group(group)
        if isinstance(call.outcome, BaseException):
            raise call.outcome
        assert call.outcome is not None
        return call.outcome

    def _commit_group(self, group: list[_Call]) -> None:
        outcomes: Outcomes | None = None
        try:
            outcomes = self._commit([c.tasks for c in group])
        except Exception as exc:
            outcomes = [exc] * len(group)
        finally:
            with self._turn:
                if outcomes is None:  # interrupted (KeyboardInterrupt in this thread)
                    interrupted = StorageError(
                        "the enqueue committing these tasks was interrupted: "
                        "they may or may not be stored"
                    )
                    outcomes = [interrupted] * len(group)
                for call, outcome in zip(group, outcomes, strict=True):
                    call.outcome = outcome
                self._committing = False
                self._turn.notify_all()
