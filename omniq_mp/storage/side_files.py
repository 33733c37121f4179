"""Large payloads and results kept in files beside a queue store's own records: for
SQLite, beside the database; for the file store, in its ``large/`` folder.

A payload or result of ``SIDE_FILE_MIN`` bytes or more is written to a file of its own
and the record names the file instead of holding the bytes. For SQLite, the row's
``payload`` or ``result`` column holds the name as TEXT instead of the bytes as a BLOB (a
real one is always a BLOB, so the two never mix); the file store's entries name theirs
in a ``files`` field (file.py). Why, for results: storing a 100 MiB value in a row made
SQLite build the row's record and hold its pages, about twice the value's size in the
supervisor's memory on top of the frame it arrived in; a file is written straight from
that frame. Why, for payloads: a store rewrites a task's whole record when it is claimed
and when it is settled, so a 100 MiB payload inline was copied twice more (through
SQLite's WAL, and again into the database at each checkpoint): 4.3 s to run ``len`` on
it, against well under a second with the payload in a file. Both stay clear of SQLite's
1 GB cap.

Durability is the record's: the file is written to a temporary name, fsync'ed, renamed
into place and its folder fsync'ed before the write that references it commits.
A crash between the two leaves an unreferenced file, never a reference to a missing
one; :meth:`SideFiles.sweep` removes such files once they are older than any
enqueue or settlement could still be in flight. A file is only removed once the
transaction that could have named it is over and no row names it.

A file that is missing, or a name not of our form, is damage (:class:`SideFileMissing`):
SQLite sets the task aside as DEAD, as a damaged row is; the file store moves the entry to
quarantine, as a damaged entry is. In SQLite a file that exists but cannot be read (no
permission, an I/O error, too many open files) sets its task aside too, so that one file
cannot stop a supervisor's claims, but its row keeps the name
(:class:`UnreadableSideFile`): once the file reads again, a retry runs the task with it.
The file store fails that read, as it fails one of an unreadable entry.

Names are random hex chosen here, and a name read back from a record is checked against
that form before it is opened: one edited to say ``../../somewhere`` reads nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import operator
import os
import re
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from omniq_mp.errors import StorageError
from omniq_mp.file_modes import FILE_MODE, make_private_dirs
from omniq_mp.models import Task
from omniq_mp.sqlite_setup import os_storage_error

__all__ = [
    "SIDE_FILE_MIN",
    "FiledTasks",
    "SideFileMissing",
    "SideFiles",
    "UnreadableSideFile",
    "file_payloads",
    "has_large_payload",
]

SIDE_FILE_MIN = 1 << 20  # bytes: payloads and results this large go to files of their own
_KINDS = ("payload", "result")  # each file's suffix says which it holds
_NAME = re.compile(r"[0-9a-f]{32}\.(?:payload|result)")
_TEMP = ".tmp"


class SideFileMissing(StorageError):
    """A row names a side file that does not exist, or a name that is not one."""


@dataclasses.dataclass(frozen=True)
class UnreadableSideFile:
    """Stands in a row read back for a side file that exists but could not be read: the
    row decodes as damaged, and setting it aside leaves the column naming the file."""

    name: str
    reason: str  # the StorageError's words, naming the file


class SideFiles:
    """The side-file folder of one store: write, read, remove and sweep files.

    :param folder: where the files live (created 0700 at the first write).
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @classmethod
    def beside(cls, database: Path) -> SideFiles:
        """The folder of ``database``: ``<database>-results``, like SQLite's ``-wal``."""
        return cls(database.with_name(database.name + "-results"))

    def write(self, data: bytes | bytearray | memoryview, kind: str = "result") -> str:
        """Store ``data`` (a ``"payload"`` or a ``"result"``) durably under a new name and
        return the name.

        :raises StorageFullError: no room; :raises StorageReadOnlyError: a read-only
            file system; :raises StorageError: any other failure. Nothing is left behind.
        """
        if kind not in _KINDS:
            raise ValueError(f"a side file holds a payload or a result, not {kind!r}")
        name = f"{uuid.uuid4().hex}.{kind}"
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
            raise os_storage_error(final, exc, f"write the {kind} file") from exc
        return name

    def read(self, name: str) -> bytes:
        """The bytes stored under ``name``.

        :raises SideFileMissing: the name is not one this store writes, or the file does
            not exist. :raises StorageError: it cannot be read (the message names it).
        """
        if not _NAME.fullmatch(name):
            raise SideFileMissing(f"side file reference {name!r} is not a side file name")
        path = self.folder / name
        try:
            return path.read_bytes()
        except FileNotFoundError as exc:
            raise SideFileMissing(f"{path.suffix[1:]} file {path} does not exist") from exc
        except OSError as exc:
            raise os_storage_error(path, exc, f"read the {path.suffix[1:]} file") from exc

    def size(self, name: str) -> int | None:
        """The size in bytes of the file stored under ``name``; None when it is not there
        or cannot be looked at (reading it then reports why)."""
        if not self.owns(name):
            return None
        try:
            return os.stat(self.folder / name).st_size
        except OSError:
            return None

    def owns(self, name: str) -> bool:
        """Whether ``name`` has the form of a side file's (a record may say anything)."""
        return _NAME.fullmatch(name) is not None

    def names(self) -> Iterator[str]:
        """The side files present (temporary files and anything else left out)."""
        try:
            entries = os.listdir(self.folder)
        except FileNotFoundError:
            return iter(())
        return filter(self.owns, entries)

    def remove(self, names: Iterable[str]) -> None:
        """Delete these files (names that are malformed or already gone are skipped)."""
        for name in names:
            if _NAME.fullmatch(name):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.folder / name)

    def sweep(self, referenced: set[str], min_age: float) -> int:
        """Delete files no row references, and temporary files, older than ``min_age``
        seconds (younger ones may belong to an enqueue or a settlement about to commit);
        returns how many were deleted."""
        try:
            entries = list(os.scandir(self.folder))
        except FileNotFoundError:
            return 0
        cutoff = time.time() - min_age
        removed = 0
        for entry in entries:
            stale = _NAME.fullmatch(entry.name) and entry.name not in referenced
            leftover = entry.name.endswith(tuple(f".{kind}{_TEMP}" for kind in _KINDS))
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


_GET_PAYLOAD = operator.attrgetter("payload")


def has_large_payload(tasks: Sequence[Task]) -> bool:
    """Whether any of ``tasks`` has a payload for a side file (checked at C speed: every
    enqueue asks)."""
    return bool(tasks) and max(map(len, map(_GET_PAYLOAD, tasks))) >= SIDE_FILE_MIN


class FiledTasks(list[Task]):
    """One enqueue call's tasks, each large payload already in a side file: such a task
    is a copy with an empty payload, which its INSERT writes, and the same transaction
    then writes the file's name over it (see :meth:`references`). The names travel with
    the tasks, not in state the store shares between calls, so a call cancelled while
    its transaction runs cannot take them from under it."""

    def __init__(self, tasks: Iterable[Task], names: dict[int, str]) -> None:
        super().__init__(tasks)
        self.names = names  # position in this list -> side file name
        self._by_object = {id(self[i]): name for i, name in names.items()}

    def references(self, inserted: Iterable[Task]) -> list[tuple[str, str]]:
        """(file name, task id) of those ``inserted`` tasks whose payload is in a file."""
        return [(name, t.id) for t in inserted if (name := self._by_object.get(id(t)))]

    def filed_ids(self) -> list[str]:
        """The ids of the tasks whose payload is in a file."""
        return [self[i].id for i in self.names]


def file_payloads(files: SideFiles, tasks: Sequence[Task]) -> FiledTasks:
    """``tasks`` with each payload of ``SIDE_FILE_MIN`` bytes or more written, durably,
    to a side file (none is left behind if one cannot be written)."""
    names: dict[int, str] = {}
    filed = list(tasks)
    try:
        for i, task in enumerate(tasks):
            if len(task.payload) >= SIDE_FILE_MIN:
                names[i] = files.write(task.payload, "payload")
                filed[i] = dataclasses.replace(task, payload=b"")
    except BaseException:
        files.remove(names.values())
        raise
    return FiledTasks(filed, names)
