"""Events in SQLite: one ``events`` table whose rowid is the position.

Kept in its own database file by default (``events.db`` beside ``omniq.db``) so event
writes never contend with claims and settlements for the queue's write lock.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from omniq_mp.errors import StorageError
from omniq_mp.eventstore.base import Event, EventType, StoredEvent
from omniq_mp.file_modes import create_private_file, make_private_dirs
from omniq_mp.sqlite_setup import connect_async, storage_error

__all__ = ["SQLiteEventStorage"]

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS events ("
    " position INTEGER PRIMARY KEY AUTOINCREMENT,"
    " event_type TEXT NOT NULL, task_id TEXT, timestamp REAL NOT NULL,"
    " body TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS events_task ON events (task_id, position)",
    "CREATE INDEX IF NOT EXISTS events_time ON events (timestamp)",
)


# Rows per INSERT: 4 parameters each stay under the 999 an old SQLite build allows. One
# statement per chunk, not per event: sqlite3 lets go of the GIL around each statement
# step, and taking it back from a busy supervisor loop costs a thread wake-up each.
_ROWS_PER_INSERT = 200


@functools.lru_cache(maxsize=256)
def _insert(count: int) -> str:
    rows = ", ".join(["(?, ?, ?, ?)"] * count)
    return f"INSERT INTO events (event_type, task_id, timestamp, body) VALUES {rows}"


class SQLiteEventStorage:
    """An event log in a SQLite file (WAL, so followers read while the supervisor writes).

    :param database_path: the database file; its folder is created if missing.
    """

    def __init__(self, database_path: str | Path) -> None:
        self.path = Path(database_path)
        self._conn: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()  # one statement sequence at a time on the connection
        self.skipped = 0  # malformed rows passed over by read()

    async def open(self) -> None:
        """Open or create the log."""
        if self._conn is not None:
            return
        try:
            # 0700 folder, 0600 file made before SQLite opens it (its -wal and -shm
            # files take the database's mode): events name tasks and their errors.
            make_private_dirs(self.path.parent)
            create_private_file(self.path)
            # NORMAL: events survive a crash of the process; a power cut may lose the
            # last few, which the tasks' own rows do not depend on.
            self._conn = await connect_async(self.path, synchronous="NORMAL")
            for statement in _SCHEMA:
                await self._conn.execute(statement)
        except (sqlite3.Error, OSError) as exc:
            await self.close()
            raise StorageError(f"cannot open event store {self.path}: {exc}") from exc

    async def close(self) -> None:
        """Close the connection."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    def _connection(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise StorageError(f"event store {self.path} is not open")
        return self._conn

    async def append(self, events: Sequence[Event]) -> None:
        """Insert the events in one transaction."""
        rows = [(e.event_type.value, e.task_id, e.timestamp, e.to_json()) for e in events]
        async with self._lock:
            conn = self._connection()
            try:
                await conn.execute("BEGIN IMMEDIATE")
                for start in range(0, len(rows), _ROWS_PER_INSERT):
                    chunk = rows[start : start + _ROWS_PER_INSERT]
                    await conn.execute(
                        _insert(len(chunk)), [value for row in chunk for value in row]
                    )
                await conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    await conn.execute("ROLLBACK")
                raise storage_error(self.path, exc) from exc

    async def read(
        self,
        after: int = 0,
        limit: int = 1000,
        task_id: str | None = None,
        types: Sequence[EventType] | None = None,
    ) -> list[StoredEvent]:
        """Events after ``after``; a malformed row is skipped and counted in ``skipped``."""
        where, params = ["position > ?"], list[Any]([after])
        if task_id is not None:
            where.append("task_id = ?")
            params.append(task_id)
        if types is not None:
            if not types:
                return []
            where.append(f"event_type IN ({', '.join('?' * len(types))})")
            params += [t.value for t in types]
        async with self._lock:
            try:
                rows = await self._connection().execute_fetchall(
                    f"SELECT position, body FROM events WHERE {' AND '.join(where)} "
                    "ORDER BY position LIMIT ?",
                    [*params, limit],
                )
            except sqlite3.Error as exc:
                raise StorageError(f"{self.path}: {exc}") from exc
        decoded = [_decode(r[0], r[1]) for r in rows]
        self.skipped += sum(s is None for s in decoded)
        return [s for s in decoded if s is not None]

    async def purge(self, before: float) -> int:
        """Delete events older than ``before``."""
        async with self._lock:
            cursor = await self._connection().execute(
                "DELETE FROM events WHERE timestamp < ?", (before,)
            )
            return int(cursor.rowcount)


def _decode(position: int, body: str) -> StoredEvent | None:
    try:
        return StoredEvent(position, Event.from_dict(json.loads(body)))
    except (ValueError, TypeError, KeyError):
        return None
