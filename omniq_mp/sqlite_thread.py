"""A sqlite3 connection confined to a thread of its own, driven from asyncio one whole
function at a time.

Why not a statement at a time (as aiosqlite does): every call into the connection's
thread costs a wake-up of that thread and one of the event loop on the way back, and a
claim or settle transaction is four to six statements. Profiling a drain showed those
hops, not SQLite, bounding the supervisor: running a transaction's body as one plain
function in the thread makes it one hop, whatever it executes. A function runs to its end
before the next one starts, so transactions never interleave and need no lock.

Why a plain thread and not a one-thread ``ThreadPoolExecutor``: a round trip of an empty
function through ``run_in_executor`` took 75 µs here against 30 µs through a queue and
``call_soon_threadsafe`` (the executor adds locks, a semaphore and a second future
chained to the first), and every claim, settle and asyncio-client enqueue is one. And
``concurrent.futures`` ends its pools' threads as the interpreter starts to exit, so a
store left open could not be closed from an exit hook; this thread lives until closed.
"""

from __future__ import annotations

import asyncio
import functools
import queue
import sqlite3
import threading
import weakref
from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

from omniq_mp.sched_class import use_batch_class

__all__ = ["SQLiteThread"]

T = TypeVar("T")
P = ParamSpec("P")

_Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[[], Any]]


class SQLiteThread:
    """One connection, one thread; :meth:`run` calls ``fn(connection, *args)`` there.

    :param name: names the thread (seen in py-spy and thread dumps).
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()  # None: end
        self._thread: threading.Thread | None = None
        self._conn: sqlite3.Connection | None = None
        # Collected without close() (a store its program dropped): the thread ends too.
        # It holds only the queue, never this object, so that collection can happen.
        weakref.finalize(self, self._jobs.put, None)

    async def open(self, connect: Callable[[], sqlite3.Connection]) -> None:
        """Make the connection in the thread that will use it (sqlite3 insists)."""
        if self._thread is None:
            # A daemon: a store the program never closed must not keep it from exiting.
            self._thread = threading.Thread(
                target=_serve, args=(self._jobs,), name=self._name, daemon=True
            )
            self._thread.start()
        self._conn = await self._call(connect)

    async def run(
        self,
        fn: Callable[Concatenate[sqlite3.Connection, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """``fn(connection, *args, **kwargs)`` in the connection's thread, in one hop.

        :raises RuntimeError: the connection is not open.
        """
        conn = self._conn
        if conn is None:
            raise RuntimeError("the SQLite connection is not open")
        return await self._call(lambda: fn(conn, *args, **kwargs))

    async def close(self) -> None:
        """Close the connection and end the thread (idempotent)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._call(conn.close)
        if self._thread is not None:
            self._jobs.put(None)  # after every job queued before it
            self._thread = None

    def _call(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        if self._thread is None:
            raise RuntimeError("the SQLite connection's thread is not running")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((loop, future, fn))
        return future


def _serve(jobs: queue.SimpleQueue[_Job | None]) -> None:
    use_batch_class()  # handed a job, it must not preempt the loop that handed it over
    while (job := jobs.get()) is not None:
        _do(*job)
        del job  # a claim's rows are not kept alive while the thread waits


def _do(
    loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], fn: Callable[[], Any]
) -> None:
    try:
        settle = functools.partial(_succeed, future, fn())
    except BaseException as exc:  # handed to the awaiting coroutine, as an executor would
        settle = functools.partial(_fail, future, exc)
    try:
        loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the loop was closed meanwhile: nobody is waiting
        pass


def _succeed(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():  # the caller may have been cancelled meanwhile
        future.set_result(result)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
