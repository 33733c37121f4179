"""Results in SQLite: one ``results`` table keyed by task id, values as raw BLOBs.

Kept in its own database file by default (``results.db``) so result writes never contend
with claims and settlements for the queue's write lock. WAL lets producers read results
while the supervisor writes them, from any number of processes.

A row that does not decode (a status that is not terminal, an error that is not a JSON
object...) raises :class:`~omniq_mp.errors.StorageError` naming its task id rather than
reading as missing: a caller waiting for that result should learn it is damaged, not wait
for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from omniq_mp.errors import StorageError
from omniq_mp.file_modes import create_private_file, make_private_dirs
from omniq_mp.models import TaskStatus
from omniq_mp.results.base import TaskResult, check_terminal
from omniq_mp.sqlite_setup import connect_async, storage_error

__all__ = ["SQLiteResultStorage"]

T = TypeVar("T")
_SCHEMA = (
    # A rowid table, not WITHOUT ROWID: values can be megabytes, which a rowid table keeps
    # out of the primary-key b-tree.
    "CREATE TABLE IF NOT EXISTS results ("
    " task_id TEXT PRIMARY KEY, status TEXT NOT NULL, result BLOB, error TEXT,"
    " finished_at REAL NOT NULL, expires_at REAL)",
    # Only rows that can expire are indexed; `expires_at < ?` implies NOT NULL, so purge
    # can use it.
    "CREATE INDEX IF NOT EXISTS results_expiry ON results (expires_at)"
    " WHERE expires_at IS NOT NULL",
)
_COLUMNS = "task_id, status, result, error, finished_at, expires_at"
_LIVE = "(expires_at IS NULL OR expires_at >= ?)"  # not past expiry: see is_expired
_CHUNK = 500  # ids per IN (...) list, well under SQLite's bound-parameter limit


class SQLiteResultStorage:
    """A result store in a SQLite file, shared safely by several processes.

    A result whose ``expires_at`` has passed is no longer returned, even before
    :meth:`purge_expired` deletes it.

    :param database_path: the database file; its folder is created if missing.
    """

    def __init__(self, database_path: str | Path = "./omniq_data/results.db") -> None:
        self.path = Path(database_path)
        self._conn: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()  # one statement sequence at a time on the connection

    async def open(self) -> None:
        """Open or create the database and its table (idempotent).

        :raises StorageError: the file cannot be created or is not a SQLite database.
        """
        if self._conn is not None:
            return
        try:
            # 0700 folder, 0600 file made before SQLite opens it (its -wal and -shm
            # files take the database's mode): clients unpickle what this store holds.
            make_private_dirs(self.path.parent)
            create_private_file(self.path)
            # FULL, as the queue store: a result the queue calls finished must survive a
            # power cut too.
            self._conn = await connect_async(self.path, synchronous="FULL")
            for statement in _SCHEMA:
                await self._conn.execute(statement)
        except (sqlite3.Error, OSError) as exc:
            await self.close()
            raise StorageError(f"cannot open result store {self.path}: {_one_line(exc)}") from exc

    async def close(self) -> None:
        """Close the connection (idempotent; safe if :meth:`open` failed or never ran)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    async def drop(self) -> None:
        """Delete everything this store created: the ``results`` table (the database file
        stays, as other stores may share it). Tests use it to clean up."""
        await self._transaction(lambda conn: conn.execute("DROP TABLE IF EXISTS results"))

    async def store(self, results: Sequence[TaskResult]) -> None:
        """Write the results in one transaction, replacing any stored under the same ids.

        :raises ValueError: a result's status is not terminal (nothing is stored).
        """
        check_terminal(results)
        rows = [_encode(r) for r in results]
        if rows:
            await self._transaction(
                lambda conn: conn.executemany(
                    f"INSERT OR REPLACE INTO results ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)", rows
                )
            )

    async def get(self, task_id: str) -> TaskResult | None:
        """The result, or None when unknown or expired.

        :raises StorageError: the stored row is damaged.
        """
        found = await self.get_many([task_id])
        return found.get(task_id)

    async def get_many(self, task_ids: Sequence[str]) -> dict[str, TaskResult]:
        """The known, unexpired results among ``task_ids``, by id.

        :raises StorageError: a stored row among them is damaged.
        """
        now, rows = time.time(), list[Any]()
        async with self._lock:
            conn = self._connection()
            try:
                for chunk in _chunks(task_ids):
                    rows += await conn.execute_fetchall(
                        f"SELECT {_COLUMNS} FROM results "
                        f"WHERE task_id IN ({', '.join('?' * len(chunk))}) AND {_LIVE}",
                        [*chunk, now],
                    )
            except sqlite3.Error as exc:
                raise StorageError(f"{self.path}: {_one_line(exc)}") from exc
        decoded = (self._decode(row) for row in rows)
        return {result.task_id: result for result in decoded}

    async def delete(self, task_ids: Sequence[str]) -> int:
        """Delete the results in one transaction; return how many existed."""

        async def delete_chunks(conn: aiosqlite.Connection) -> int:
            deleted = 0
            for chunk in _chunks(task_ids):
                cursor = await conn.execute(
                    f"DELETE FROM results WHERE task_id IN ({', '.join('?' * len(chunk))})", chunk
                )
                deleted += cursor.rowcount
            return deleted

        return await self._transaction(delete_chunks)

    async def purge_expired(self, now: float) -> int:
        """Delete results whose ``expires_at`` is before ``now``; return how many."""
        cursor = await self._transaction(
            lambda conn: conn.execute("DELETE FROM results WHERE expires_at < ?", (now,))
        )
        return int(cursor.rowcount)

    def _connection(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise StorageError(f"result store {self.path} is not open; call open() first")
        return self._conn

    async def _transaction(self, body: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
        """Run ``body`` in BEGIN IMMEDIATE ... COMMIT; roll back on any failure, a
        cancellation included, so the connection is never left inside a transaction."""
        async with self._lock:
            conn = self._connection()
            try:
                await conn.execute("BEGIN IMMEDIATE")
                done = await body(conn)
                await conn.execute("COMMIT")
                return done
            except BaseException as exc:
                # Queued behind whatever ran: fails harmlessly when no transaction is open.
                with contextlib.suppress(sqlite3.Error):
                    await conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    error = storage_error(self.path, exc)
                    raise type(error)(_one_line(error)) from exc
                raise

    def _decode(self, row: Sequence[Any]) -> TaskResult:
        task_id, status, value, error, finished_at, expires_at = row
        try:
            if value is not None and not isinstance(value, bytes):
                raise TypeError(f"value is {type(value).__name__}, not bytes")
            return TaskResult.from_dict(
                {
                    "task_id": task_id,
                    "status": status,
                    "result": value,
                    "error": None if error is None else _error_dict(error),
                    "finished_at": finished_at,
                    "expires_at": expires_at,
                }
            )
        except (ValueError, TypeError, KeyError) as exc:
            raise StorageError(
                f"{self.path}: the stored result of task {task_id!r} is damaged: {exc}"
            ) from exc


def _encode(result: TaskResult) -> tuple[Any, ...]:
    error = None if result.error is None else json.dumps(result.error.to_dict())
    return (
        result.task_id,
        TaskStatus(result.status).value,
        result.result,
        error,
        result.finished_at,
        result.expires_at,
    )


def _error_dict(text: str) -> dict[str, Any]:
    data = json.loads(text)
    if not isinstance(data, dict):
        raise TypeError("error is not a JSON object")
    return data


def _chunks(task_ids: Sequence[str]) -> Iterator[list[str]]:
    unique = list(dict.fromkeys(task_ids))  # an id given twice is looked up and counted once
    for start in range(0, len(unique), _CHUNK):
        yield unique[start : start + _CHUNK]


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
