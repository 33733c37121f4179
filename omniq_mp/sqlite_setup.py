"""How every SQLite store of omniq_mp sets up a fresh connection (queue, events, results)."""

from __future__ import annotations

import asyncio
import random
import sqlite3

import aiosqlite

from omniq_mp.errors import StorageError, StorageFullError, StorageReadOnlyError

__all__ = ["LOCK_RETRIES", "configure_connection", "is_locked", "storage_error"]

LOCK_RETRIES = 20


async def configure_connection(
    conn: aiosqlite.Connection, *, synchronous: str, busy_ms: int = 5000
) -> str:
    """Busy timeout, a schema probe, WAL and the synchronous level; returns the journal
    mode SQLite reports (``"wal"`` unless the file system refuses it).

    Several processes opening a new database at once contend for the switch to WAL,
    which SQLite refuses at once (no busy handler) while another connection holds the
    file: the setup is tried again with backoff instead of failing the later process.

    :raises sqlite3.Error: the file is not a database, or stayed locked.
    """
    for attempt in range(LOCK_RETRIES):
        try:
            return await _configure(conn, synchronous, busy_ms)
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            await asyncio.sleep(random.uniform(0.01, 0.05) * (attempt + 1))
    return await _configure(conn, synchronous, busy_ms)


async def _configure(conn: aiosqlite.Connection, synchronous: str, busy_ms: int) -> str:
    await conn.execute(f"PRAGMA busy_timeout = {busy_ms}")
    # Reading the schema first makes a corrupt file fail here, before any write. The
    # cursor is closed so no read transaction is left open for the WAL switch.
    async with conn.execute("SELECT count(*) FROM sqlite_master") as cursor:
        await cursor.fetchone()
    async with conn.execute("PRAGMA journal_mode = WAL") as cursor:
        mode = await cursor.fetchone()
    await conn.execute(f"PRAGMA synchronous = {synchronous}")
    return "" if mode is None else str(mode[0]).lower()


def is_locked(exc: sqlite3.Error) -> bool:
    """Another connection holds the lock: worth trying again after a pause."""
    return _primary_code(exc) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or (
        "locked" in str(exc) or "busy" in str(exc)
    )


def storage_error(path: object, exc: sqlite3.Error) -> StorageError:
    """The StorageError a failed statement or commit stands for, by SQLite's result code:
    no room (``SQLITE_FULL``: disk full, file size limit, ``max_page_count``) and
    read-only stores get their own types, because callers treat them differently (wait
    for space, or stop) from a damaged or missing file."""
    code = _primary_code(exc)
    if code == sqlite3.SQLITE_FULL:
        return StorageFullError(f"{path}: no room to write: {exc}")
    if code == sqlite3.SQLITE_READONLY or "readonly" in str(exc):
        return StorageReadOnlyError(f"{path}: the store is read-only: {exc}")
    return StorageError(f"{path}: {exc}")


def _primary_code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else int(code) & 0xFF
