"""Owner-only modes for the store files omniq_mp creates, and the start-up check of stores
other users can reach.

Payloads are pickles: whoever can write a queue store (its folder, its database, SQLite's
``-wal``) can run code as the worker's user, and whoever can read it sees every argument
and result. So every folder omniq_mp creates is made 0700 and every file 0600, by giving
the mode when creating (``os.mkdir``/``os.open``), never by a ``chmod`` afterwards, which
leaves a window, nor by ``os.umask``, which is process-wide and would race other threads.
SQLite's ``-wal``, ``-shm`` and ``-journal`` files take the database file's mode, so an
empty 0600 database file is created before SQLite opens it. Folders and files that already
exist are the user's choice and are left alone; :func:`warn_if_exposed` reports them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

from loguru import logger

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "create_private_file",
    "exposed",
    "make_private_dirs",
    "store_paths",
    "warn_if_exposed",
]

DIR_MODE = 0o700
FILE_MODE = 0o600
_OTHERS_RW = 0o066  # read or write for group or others


def make_private_dirs(path: str | Path) -> bool:
    """``mkdir -p`` where each folder created is 0700; existing ones are not touched.

    :returns: whether ``path`` itself was created.
    :raises FileExistsError: ``path`` is a file.
    :raises OSError: a parent is a file, or a folder cannot be created.
    """
    path = Path(path)
    missing: list[Path] = []
    probe = path
    while not os.path.lexists(probe) and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, DIR_MODE)
        except FileExistsError:  # another process made it first
            if not folder.is_dir():
                raise
    if not path.is_dir():
        raise FileExistsError(errno.EEXIST, "exists and is not a directory", str(path))
    return bool(missing)


def create_private_file(path: str | Path) -> None:
    """Create ``path`` empty with mode 0600 unless it exists (then it is left as it is)."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))


def exposed(path: str | Path) -> int | None:
    """The permission bits of ``path`` if group or others may read or write it, else None
    (also None when it does not exist)."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return None
    return mode if mode & _OTHERS_RW else None


def store_paths(storage: object) -> list[Path]:
    """The folders and files whose permissions decide who can write ``storage``, its
    folder first: a SQLite store's folder, database, ``-wal``, ``-shm`` and the folder of
    large results (``-results``); a file store's
    folder and the folders in it. Empty for stores that are not local files."""
    from omniq_mp.storage.file import FileStorage
    from omniq_mp.storage.sqlite import SQLiteStorage

    if isinstance(storage, SQLiteStorage):
        db = storage.path
        return [db.parent, db, Path(f"{db}-wal"), Path(f"{db}-shm"), Path(f"{db}-results")]
    if isinstance(storage, FileStorage):
        base = storage.base_dir
        with contextlib.suppress(OSError):
            return [base, *sorted(p for p in base.iterdir() if p.is_dir())]
        return [base]
    return []


def warn_if_exposed(storage: object, *, signing: bool) -> list[Path]:
    """With signing off, log one warning (action ``insecure_store``) naming each part of
    the store that group or others may read or write, with its mode.

    :returns: the exposed paths (empty with signing on).
    """
    if signing:
        return []
    paths = store_paths(storage)
    if paths and _private_folder(paths[0]):
        paths = []  # no one else can get past the folder to what is inside
    found = [(p, mode) for p in paths if (mode := exposed(p)) is not None]
    if not found:
        return []
    listed = ", ".join(f"{path} (mode {mode:04o})" for path, mode in found)
    logger.bind(action="insecure_store", paths=[str(p) for p, _ in found]).warning(
        "the task store is readable or writable by other users: {}. Payloads are pickles, so "
        "anyone who can write the store can run code as this worker's user (and anyone who "
        "can read it sees every argument and result). chmod folders 0700 and files 0600, or "
        "set signing_key so that only holders of the key can enqueue code",
        listed,
    )
    return [p for p, _ in found]


def _private_folder(folder: Path) -> bool:
    try:
        return stat.S_IMODE(os.stat(folder).st_mode) & 0o077 == 0
    except OSError:
        return False
