"""How every SQLite store of omniq_mp sets up a fresh connection (queue, events, results)."""

from __future__ import annotations

import asyncio
import random
import sqlite3

import aiosqlite

__all__ = ["LOCK_RETRIES", "configure_connection"]

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
