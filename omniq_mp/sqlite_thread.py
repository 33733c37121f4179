"""A sqlite3 connection confined to a thread of its own, driven from asyncio one whole
function at a time.

Why not a statement at a time (as aiosqlite does): every call into the connection's
thread costs a wake-up of that thread and one of the event loop on the way back, and a
claim or settle transaction is four to six statements. Profiling a drain showed those
hops, not SQLite, bounding the supervisor: running a transaction's body as one plain
function in the thread makes it one hop, whatever it executes. A function runs to its end
before the next one starts, so transactions never interleave and need no lock.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Concatenate, ParamSpec, TypeVar

__all__ = ["SQLiteThread"]

T = TypeVar("T")
P = ParamSpec("P")


class SQLiteThread:
    """One connection, one thread; :meth:`run` calls ``fn(connection, *args)`` there.

    :param name: names the thread (seen in py-spy and thread dumps).
    """

    def __init__(self, name: str) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._conn: sqlite3.Connection | None = None

    async def open(self, connect: Callable[[], sqlite3.Connection]) -> None:
        """Make the connection in the thread that will use it (sqlite3 insists)."""
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
        """Close the connection and let the thread end (idempotent)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._call(conn.close)
        self._executor.shutdown(wait=False)

    def _call(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        return asyncio.get_running_loop().run_in_executor(self._executor, fn)
