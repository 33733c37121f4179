"""Wake-ups for idle supervisors: LISTEN on one dedicated connection.

Every write that makes work claimable (enqueue, revive, a fired schedule, a retry) sends
``pg_notify`` on the schema's channel in its own transaction, so the notification arrives
exactly when the work becomes visible. The listening connection lives outside the pool:
a pooled connection would be handed to other operations and lose its LISTEN.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from omniq_mp.extras import require

__all__ = ["WorkListener"]

# A connection attempt may outlast a very short wait by at most this much.
_MIN_CONNECT_TIMEOUT = 0.5


class WorkListener:
    """Waits for notifications on ``channel``; reconnects after the connection is lost.

    A lost connection is noticed at the next wait, never by a busy loop: the wait that was
    running when it broke returns False at its timeout, and the next one reconnects and
    returns True at once, because notifications sent meanwhile were missed.
    """

    def __init__(self, dsn: str, channel: str) -> None:
        self._dsn = dsn
        self._channel = channel
        self._conn: Any = None
        self._had_connection = False
        self._event = asyncio.Event()
        self._connecting = asyncio.Lock()  # concurrent waiters must not open two connections
        self._due: float | None = None  # see take_due
        self._closes = 0  # close() calls so far: a connection made across one is dropped

    async def wait(self, timeout: float) -> bool:
        """True when notified (or when work may have arrived unheard); False after
        ``timeout`` seconds without news."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout, 0.0)
        if not self._connected():
            async with self._connecting:
                missed = self._had_connection
                connected = self._connected() or await self._connect(deadline - loop.time())
            if not connected:
                await asyncio.sleep(max(deadline - loop.time(), 0.0))
                return False
            if missed:
                self._event.clear()  # this True covers whatever had arrived before
                return True
        if not self._event.is_set():
            try:
                await asyncio.wait_for(self._event.wait(), max(deadline - loop.time(), 0.0))
            except TimeoutError:
                return False
        self._event.clear()
        return True

    async def close(self) -> None:
        """Stop listening and close the connection (idempotent); a connection still being
        made is closed as soon as it is made."""
        self._closes += 1
        conn, self._conn = self._conn, None
        if conn is None or conn.is_closed():
            return
        try:
            await conn.close(timeout=2.0)
        except Exception:  # closing a broken connection: drop it without a goodbye
            conn.terminate()

    def _connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def _connect(self, remaining: float) -> bool:
        asyncpg = require("asyncpg", "postgres", "PostgreSQL queue storage")
        await self.close()
        closes = self._closes
        conn = None
        try:
            conn = await asyncpg.connect(self._dsn, timeout=max(remaining, _MIN_CONNECT_TIMEOUT))
            await conn.add_listener(self._channel, self._notified)
            if closes == self._closes:  # else the store was closed while this connected
                self._conn, conn = conn, None
                self._had_connection = True
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            pass
        finally:
            # Failed, cancelled (a supervisor stopping mid-connect) or no longer wanted:
            # a connection left to the garbage collector stays open on the server until then.
            if conn is not None:
                conn.terminate()
        return self._conn is not None

    def take_due(self) -> float | None:
        """The earliest due time the notifications since the last call carried (enqueues
        send their tasks' earliest ETA), then forget it."""
        due, self._due = self._due, None
        return due

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            when = float(payload) if payload else math.nan
        except ValueError:  # anyone who can NOTIFY on the channel may send anything
            when = math.nan
        if math.isfinite(when) and (self._due is None or when < self._due):
            self._due = when
        self._event.set()
