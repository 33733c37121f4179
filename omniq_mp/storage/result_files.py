"""Large results of a SQLite queue store, kept in files beside the database.

A result of ``SIDE_FILE_MIN`` bytes or more is written to ``<database>-results/<name>``
and the row's ``result`` column holds the file's name as TEXT instead of the bytes as a
BLOB (a real result is always a BLOB, so the two never mix). Why: storing a 100 MiB
value in a row made SQLite build the row's record and hold its pages, about twice the
value's size in the supervisor's memory on top of the frame it arrived in; a file is
written straight from that frame. It also keeps results clear of SQLite's 1 GB cap.

Durability is the row's: the file is written to a temporary name, fsync'ed, renamed
into place and its folder fsync'ed before the transaction that references it commits.
A crash between the two leaves an unreferenced file, never a reference to a missing
one; :meth:`ResultFiles.sweep` removes such files once they are older than any
settlement could still be in flight.

Names are random hex chosen here, and a name read back from a row is checked against
that form before it is opened: a row edited to say ``../../somewhere`` reads nothing.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

from omniq_mp.errors import StorageError
from omniq_mp.file_modes import FILE_MODE, make_private_dirs
from omniq_mp.sqlite_setup import os_storage_error

__all__ = ["SIDE_FILE_MIN", "ResultFiles"]

SIDE_FILE_MIN = 1 << 20  # bytes: results this large go to a file of their own
_NAME = re.compile(r"[0-9a-f]{32}\.result")
_SUFFIX = ".result"
_TEMP = ".tmp"


class ResultFiles:
    """The side-file folder of one SQLite store: write, read, remove and sweep files.

    :param folder: where the files live (created 0700 at the first write).
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @classmethod
    def beside(cls, database: Path) -> ResultFiles:
        """The folder of ``database``: ``<database>-results``, like SQLite's ``-wal``."""
        return cls(database.with_name(database.name + "-results"))

    def write(self, data: bytes | bytearray | memoryview) -> str:
        """Store ``data`` durably under a new name and return the name.

        :raises StorageFullError: no room; :raises StorageReadOnlyError: a read-only
            file system; :raises StorageError: any other failure. Nothing is left behind.
        """
        name = uuid.uuid4().hex + _SUFFIX
        final = self.folder / name
        temp = final.with_name(name + _TEMP)
        try:
            make_private_dirs(self.folder)
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
            try:
                view = memoryview(data)
                while view:  # os.write may write less than asked (a signal, a pipe-like fs)
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(temp, final)
            self._sync_folder()
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise os_storage_error(final, exc, "write the result file") from exc
        return name

    def read(self, name: str) -> bytes:
        """The bytes stored under ``name``.

        :raises StorageError: the name is not one this store writes, or the file is
            missing or unreadable (the message names it).
        """
        if not _NAME.fullmatch(name):
            raise StorageError(f"result reference {name!r} is not a result file name")
        path = self.folder / name
        try:
            return path.read_bytes()
        except OSError as exc:
            raise StorageError(f"result file {path} cannot be read: {exc.strerror}") from exc

    def remove(self, names: Iterable[str]) -> None:
        """Delete these files (names that are malformed or already gone are skipped)."""
        for name in names:
            if _NAME.fullmatch(name):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.folder / name)

    def sweep(self, referenced: set[str], min_age: float) -> int:
        """Delete files no row references, and temporary files, older than ``min_age``
        seconds (younger ones may belong to a settlement about to commit); returns how
        many were deleted."""
        try:
            entries = list(os.scandir(self.folder))
        except FileNotFoundError:
            return 0
        cutoff = time.time() - min_age
        removed = 0
        for entry in entries:
            stale = _NAME.fullmatch(entry.name) and entry.name not in referenced
            leftover = entry.name.endswith(_SUFFIX + _TEMP)
            if not (stale or leftover):
                continue  # not ours: never touched
            with contextlib.suppress(FileNotFoundError):
                if entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed += 1
        return removed

    def exists(self) -> bool:
        """Whether the folder was ever created (no sweep needed otherwise)."""
        return self.folder.is_dir()

    def _sync_folder(self) -> None:
        # The rename is durable only once the folder's entry is on disk.
        fd = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
