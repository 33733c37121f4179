"""``Inbox``: the part of ``asyncio.Queue`` that a queue with a single reader uses.

The supervisor moves every task through three queues that each have one reader: a
worker's frames (read by the task holding that worker's turn), outcomes waiting to be
stored (the recorder) and events waiting to be written (the event writer).
``asyncio.Queue`` serves any number of readers and writers, with a bound, a deque of
waiters each way and ``task_done`` bookkeeping; in a profile of a no-op drain its
``put_nowait``, ``get`` and ``get_nowait`` were among the costliest functions of the
supervisor's loop, at five puts and as many gets per task. An inbox is a deque and at
most one waiting future.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

__all__ = ["Inbox"]

T = TypeVar("T")


class Inbox(Generic[T]):
    """An unbounded FIFO for one reader at a time, on one event loop.

    The methods that both have are named as ``asyncio.Queue``'s and behave alike.
    ``put_nowait`` may be called from any callback on the loop's thread.
    """

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: deque[T] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: T) -> None:
        """Append ``item`` and wake the reader, if it waits."""
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> T:
        """The oldest item, waiting for one if there is none.

        :raises RuntimeError: another coroutine is already waiting on this inbox.
        """
        while not self._items:
            if self._waiter is not None:
                raise RuntimeError("an Inbox has one reader at a time; another is waiting")
            waiter = asyncio.get_running_loop().create_future()
            self._waiter = waiter
            try:
                await waiter
            finally:  # a cancelled reader leaves the inbox free for the next one
                self._waiter = None
        return self._items.popleft()

    def get_nowait(self) -> T:
        """The oldest item.

        :raises asyncio.QueueEmpty: there is none.
        """
        if not self._items:
            raise asyncio.QueueEmpty
        return self._items.popleft()

    def empty(self) -> bool:
        """True if no item is waiting."""
        return not self._items

    def qsize(self) -> int:
        """How many items are waiting."""
        return len(self._items)
