"""How every SQLite store of omniq_mp sets up a fresh connection (queue, events, results)."""

from __future__ import annotations

import asyncio
import errno
import functools
import os
import random
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator

import aiosqlite

from omniq_mp.errors import StorageError, StorageFullError, StorageReadOnlyError
from omniq_mp.sched_class import use_batch_class

__all__ = [
    "LOCK_RETRIES",
    "connect_async",
    "folder_is_read_only",
    "is_locked",
    "lock_pauses",
    "open_connection",
    "os_storage_error",
    "storage_error",
]

LOCK_RETRIES = 20


def open_connection(
    path: str | os.PathLike[str],
    *,
    synchronous: str,
    busy_ms: int = 5000,
    check_same_thread: bool = True,
) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit ``BEGIN IMMEDIATE``)
    with a busy timeout, WAL and the synchronous level. Call it in the thread that will
    use the connection.

    Several processes opening a new database at once contend for the switch to WAL,
    which SQLite refuses at once (no busy handler) while another connection holds the
    file: the setup is tried again with backoff instead of failing the later process.

    :raises sqlite3.Error: the file is not a database, stayed locked, or its file system
        cannot do WAL.
    """
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=check_same_thread)
    try:
        for pause in lock_pauses():
            try:
                _configure(conn, synchronous, busy_ms)
                return conn
            except sqlite3.OperationalError as exc:
                if not is_locked(exc):
                    raise
            time.sleep(pause)
        _configure(conn, synchronous, busy_ms)  # the last try: its error is the one raised
    except BaseException:
        conn.close()
        raise
    return conn


def lock_pauses() -> Iterator[float]:
    """Pauses between tries of something that met another process's lock past
    busy_timeout: LOCK_RETRIES of them, growing, with jitter so contenders spread out."""
    for attempt in range(LOCK_RETRIES):
        yield random.uniform(0.01, 0.05) * (attempt + 1)


async def connect_async(
    path: str | os.PathLike[str], *, synchronous: str, busy_ms: int = 5000
) -> aiosqlite.Connection:
    """:func:`open_connection` behind aiosqlite (its thread runs the setup too).

    :raises sqlite3.Error: as :func:`open_connection`, before any aiosqlite thread starts.
    """
    connector = functools.partial(open_connection, path, synchronous=synchronous, busy_ms=busy_ms)
    # When its connector fails, aiosqlite stops its thread without waiting for it; the
    # thread's last callback then lands on whatever loop is left, closed by then in a
    # short-lived caller (a test, a CLI command), and raises there. A file that cannot
    # be opened fails here instead, in a plain worker thread that is waited for.
    await asyncio.to_thread(lambda: connector().close())

    def connect_in_own_thread() -> sqlite3.Connection:
        use_batch_class()  # aiosqlite's thread: woken per statement, it must not preempt
        return connector()

    connection = aiosqlite.Connection(connect_in_own_thread, iter_chunk_size=64)
    # aiosqlite's thread is not a daemon: an AsyncOmniQ the program never closed (an
    # exception before its close(), a forgotten one) kept the interpreter from exiting,
    # for ever, waiting for that thread after the script's last line. As a daemon it ends
    # with the program, as the queue store's own thread does (sqlite_thread.py).
    thread = getattr(connection, "_thread", None)
    if isinstance(thread, threading.Thread) and thread.ident is None:  # not started yet
        thread.daemon = True
    return await connection


def _configure(conn: sqlite3.Connection, synchronous: str, busy_ms: int) -> None:
    conn.execute(f"PRAGMA busy_timeout = {busy_ms}")
    # Reading the schema first makes a corrupt file fail here, before any write.
    conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    row = conn.execute("PRAGMA journal_mode = WAL").fetchone()
    mode = "" if row is None else str(row[0]).lower()
    if mode != "wal":
        raise sqlite3.OperationalError(f"cannot switch to WAL mode (got {mode!r})")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    # After each checkpoint the WAL file is cut back to this size, so a burst of writes
    # does not leave a huge WAL on disk for ever.
    conn.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT}")


WAL_LIMIT = 64 * 2**20


def is_locked(exc: sqlite3.Error) -> bool:
    """Another connection holds the lock: worth trying again after a pause."""
    return _primary_code(exc) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or (
        "locked" in str(exc) or "busy" in str(exc)
    )


def storage_error(path: str | os.PathLike[str], exc: sqlite3.Error) -> StorageError:
    """The StorageError a failed statement or commit stands for, by SQLite's result code:
    no room (``SQLITE_FULL``: disk full, file size limit, ``max_page_count``) and
    read-only stores get their own types, because callers treat them differently (wait
    for space, or stop) from a damaged or missing file."""
    code = _primary_code(exc)
    if code == sqlite3.SQLITE_FULL:
        return StorageFullError(f"{path}: no room to write: {exc}")
    if code == sqlite3.SQLITE_READONLY or "readonly" in str(exc):
        return StorageReadOnlyError(f"{path}: the store is read-only: {exc}")
    # A file system that turned read-only under an open connection (ext4's
    # errors=remount-ro after a disk error) reaches SQLite as an I/O error, and one that
    # was read-only before the open as "unable to open": ask the folder itself.
    if code in (sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN) and folder_is_read_only(path):
        return StorageReadOnlyError(f"{path}: the store's file system is read-only: {exc}")
    return StorageError(f"{path}: {exc}")


def os_storage_error(path: str | os.PathLike[str], exc: OSError, what: str) -> StorageError:
    """The StorageError for an OSError met creating or opening a store's files."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return StorageFullError(f"cannot {what} {path}: no room: {exc.strerror}")
    if exc.errno == errno.EROFS:
        return StorageReadOnlyError(f"cannot {what} {path}: read-only file system")
    return StorageError(f"cannot {what} {path}: {exc.strerror or exc}")


def folder_is_read_only(path: str | os.PathLike[str]) -> bool:
    """Whether the folder of ``path`` refuses a new file with EROFS. An emergency
    read-only mount need not show in ``statvfs``, so this tries (and removes) one."""
    folder = os.path.dirname(os.fspath(path)) or "."
    try:
        fd, probe = tempfile.mkstemp(prefix=".omniq-write-probe-", dir=folder)
    except OSError as error:
        return error.errno == errno.EROFS
    os.close(fd)
    os.unlink(probe)
    return False


def _primary_code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else int(code) & 0xFF
